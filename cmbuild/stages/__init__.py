"""The stages of a build, one module each, in the order the README's pipeline draws them::

    pull -> unpack -> squashfs (the app drive: the image's root file system)
                   -> config   (config.json, its own small drive)
    init -> runtime (the runtime layer: init + crun + busybox)
    kernel
    drives (drive-<name>, one per extra [drives.<name>])
    pull-<s> -> unpack-<s> -> squashfs-<s> (each service's own image), services (their configs)
    -> snapshot (cartesi-machine --store, the root hash)

Each module holds the stage's key inputs (``key_doc``: options and the output digests of its
inputs) and its build function, and ``stage()`` returns its :class:`cmbuild.pipeline.Stage`;
:func:`cmbuild.pipeline.project_graph` puts them together for a project.
"""
