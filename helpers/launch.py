"""What workflow.sh runs: ``python -S -m helpers.launch ARGS`` (PYTHONPATH = the checkout).

``-S`` skips the site module (~30 ms a command: the editable-install finder and every other
.pth hook of the venv, none needed since the checkout is on PYTHONPATH); the venv's
site-packages (paramiko, python-dotenv) is put back on sys.path here, without running its .pth
files, and only for this process (children do not inherit it).
"""

import os
import sys

if sys.flags.no_site:
    _lib = os.path.join(sys.prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}", "site-packages")
    if os.path.isdir(_lib):
        if _lib not in sys.path:
            sys.path.append(_lib)
    else:  # an unusual layout: the normal start after all
        import site

        site.main()

from helpers.cli import main  # noqa: E402

sys.exit(main())
