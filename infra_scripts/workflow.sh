#!/usr/bin/env bash
# workflow.sh: the one entrypoint. Experiments on GPU pods from one config file (workflow.env).
#
# Thin on purpose: find the checkout, make sure its venv exists (created on first use in
# .workflow/venv), then hand every argument to the Python CLI (helpers/cli.py), which holds
# the command table, the usage text and all logic. `workflow.sh help` lists the commands.
#
# Environment: WORKFLOW_VENV=DIR uses an existing venv instead of .workflow/venv;
#              WORKFLOW_PYTHON=python3.X is the python that creates the venv (default python3);
#              WORKFLOW_VENV_EXTRAS=train,... installs optional extras into it (see pyproject.toml).
set -euo pipefail

die() {
  printf 'workflow.sh: %s\n' "$*" >&2
  exit 2
}

# sets ROOT, the checkout. No subshell and no dirname in the usual case (a plain path to the script):
# each fork costs milliseconds on a loaded machine, and a status command should start at once.
find_root() {
  local source="${BASH_SOURCE[0]}" dir
  while [[ -L "${source}" ]]; do
    dir="$(cd -P "$(dirname "${source}")" && pwd)"
    source="$(readlink "${source}")"
    [[ "${source}" == /* ]] || source="${dir}/${source}"
  done
  while [[ "${source}" == ./* ]]; do source="${source#./}"; done
  [[ "${source}" == /* ]] || source="${PWD}/${source}"
  dir="${source%/*}"
  if [[ "${dir}" == */infra_scripts && "${dir}/" != *"/./"* && "${dir}/" != *"/../"* ]]; then
    ROOT="${dir%/infra_scripts}"
    ROOT="${ROOT:-/}"
  else
    ROOT="$(cd -P "${dir}/.." && pwd)"
  fi
}

install_venv() {
  local root="$1" venv="$2"
  local base_python="${WORKFLOW_PYTHON:-python3}"
  local spec="${root}"
  command -v "${base_python}" >/dev/null 2>&1 || die "${base_python} not found; install Python 3.10+ or set WORKFLOW_PYTHON"
  if [[ -n "${WORKFLOW_VENV_EXTRAS:-}" ]]; then
    spec="${root}[${WORKFLOW_VENV_EXTRAS}]"
  fi
  printf 'workflow.sh: setting up %s (first run; about a minute)\n' "${venv}" >&2
  if [[ ! -x "${venv}/bin/python" ]]; then
    "${base_python}" -m venv "${venv}" || die "cannot create a venv with ${base_python} (install python3-venv)"
  fi
  # on a terminal pip shows what it collects and its download bars (rate, ETA); in a pipe or CI it stays quiet
  local -a pip_output=(--quiet)
  if [[ -t 2 ]]; then
    pip_output=(--progress-bar on)
  fi
  "${venv}/bin/python" -m pip install "${pip_output[@]}" --disable-pip-version-check -e "${spec}" >&2 \
    || die "pip install into ${venv} failed; see the messages above"
  printf '%s\n' "${WORKFLOW_VENV_EXTRAS:-}" >"${venv}/.workflow-stamp"
}

# the venv is (re)installed when it is missing, older than pyproject.toml, or made with other extras
venv_is_current() {
  local root="$1" venv="$2" extras=""
  [[ -f "${venv}/.workflow-stamp" && ! "${root}/pyproject.toml" -nt "${venv}/.workflow-stamp" ]] || return 1
  IFS= read -r extras <"${venv}/.workflow-stamp" || true
  [[ "${extras}" == "${WORKFLOW_VENV_EXTRAS:-}" ]]
}

# sets PYTHON, the venv's python (the venv made or updated first when needed)
find_python() {
  local root="$1"
  if [[ -n "${WORKFLOW_VENV:-}" ]]; then
    [[ -x "${WORKFLOW_VENV}/bin/python" ]] || die "WORKFLOW_VENV=${WORKFLOW_VENV} has no bin/python"
    PYTHON="${WORKFLOW_VENV}/bin/python"
    return
  fi
  local venv="${root}/.workflow/venv"
  if ! venv_is_current "${root}" "${venv}"; then
    mkdir -p "${root}/.workflow"
    install_venv "${root}" "${venv}"
  fi
  PYTHON="${venv}/bin/python"
}

main() {
  local ROOT PYTHON
  find_root
  find_python "${ROOT}"
  # -S: no site module (its .pth hooks cost ~30 ms a command); helpers/launch.py adds the venv's packages;
  # -c 'import helpers.launch' rather than -m: no runpy/importlib.util (~11 ms a command)
  WORKFLOW_ROOT="${ROOT}" PYTHONPATH="${ROOT}${PYTHONPATH:+:${PYTHONPATH}}" exec "${PYTHON}" -S -c "import helpers.launch" "$@"
}

main "$@"
