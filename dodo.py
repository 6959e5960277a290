# doit in this folder builds cartesi.toml (or the file named by $CMBUILD_CONFIG).
from cmbuild.dodo import *  # noqa: F401,F403
