"""What workflow.sh runs: ``python -S -c "import helpers.launch" ARGS`` (PYTHONPATH = the checkout;
``-c`` rather than ``-m``: runpy and importlib.util are not imported, ~11 ms a command).

``-S`` skips the site module (~30 ms a command: the editable-install finder and every other
.pth hook of the venv, none needed since the checkout is on PYTHONPATH); the venv's
site-packages (paramiko, python-dotenv) is put back on sys.path here, without running its .pth
files, and only for this process (children do not inherit it). Anything but a plain venv
(system site packages included, another layout) gets the normal start after all.

A plain read-only command line runs through helpers/fastpath.py (no argparse); anything else
through helpers/cli.py main.
"""

import os
import sys


def _venv_site_packages() -> str:
    venv = os.path.dirname(os.path.dirname(sys.executable))
    try:
        with open(os.path.join(venv, "pyvenv.cfg")) as handle:
            cfg = handle.read().replace(" ", "").lower()
    except OSError:
        return ""
    if "include-system-site-packages=true" in cfg:
        return ""
    lib = os.path.join(venv, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    return lib if os.path.isdir(lib) else ""


if sys.flags.no_site:
    _lib = _venv_site_packages()
    if _lib:
        sys.prefix = sys.exec_prefix = os.path.dirname(os.path.dirname(sys.executable))
        sys.path.append(_lib)
    else:
        import site

        site.main()

from helpers import prelaunch  # noqa: E402

prelaunch.start(sys.argv[1:])  # a cold read-only command: the SSH login runs while the imports below do

from helpers import fastpath  # noqa: E402

_code = fastpath.run(sys.argv[1:])  # a plain read-only command line: no argparse (else None)
if _code is None:
    from helpers.cli import main

    _code = main()
sys.exit(_code)
