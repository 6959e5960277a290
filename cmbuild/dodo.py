"""A dodo file for projects: ``doit`` in a folder whose dodo.py says
``from cmbuild.dodo import *`` builds the cartesi.toml beside it."""

from cmbuild.tasks import make_namespace as _make_namespace

globals().update(_make_namespace())
