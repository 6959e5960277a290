#!/bin/sh
# The entry program of cmbuild's hello example image: prints what the container sees, so that
# a test can check the image config (user, working directory, environment, arguments), the
# dynamic loader and the writable /tmp against a read-only root. It needs nothing but busybox
# and hello: failed writes are silenced by closing stderr (2>&-), not with /dev/null.
echo "Hello from cmbuild!"
hello
echo "user=$(id -un) uid=$(id -u)"
echo "cwd=$(pwd)"
echo "greeting=$GREETING"
echo "args=$*"

tmpfile="/tmp/cmbuild-hello.$$"
if { echo "tmp-ok" > "$tmpfile"; } 2>&- && [ "$(cat "$tmpfile" 2>&-)" = "tmp-ok" ]; then
    echo "tmp-write=ok"
else
    echo "tmp-write=failed"
fi
rm -f "$tmpfile"

if { echo "root-ok" > /app/write-test; } 2>&-; then
    echo "root-write=ok"
    rm -f /app/write-test
else
    echo "root-write=failed"
fi

exit "${EXIT_CODE:-0}"
