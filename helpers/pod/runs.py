"""One sweep run on the pod: its directory contract, command, manifest, summary and metrics.

``<outputs>/<run_id>/``: campaign.json (which campaign owns it), run_manifest.json (what ran:
resolved config without secrets, CSV row, git sha/dirty/diff hash, host, GPUs, torch, pip
freeze), command.sh (exact replay), run.log (every attempt's output), status.json (the live
supervisor record of the current attempt), attempts.jsonl (one line per ended attempt, never
rewritten), attempts/<n>/ (each attempt's own attempt.json, run.log, status.json and summary.json:
see attempts.py), summary.json (written by the runner at the end: ok, state, failure_class,
exit_code, one-line reason, attempts, timing, campaign, metrics). The trainer's own files
(metrics.jsonl, ckpt.pt, results.json, ...) are never overwritten; a summary.json the trainer
wrote itself is kept as trainer_summary.json before the runner writes its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import procs
from .jsonio import parse_utc, read_json, utc_now, write_json
from .schema import check
from .taskstate import read_status

SCHEMA_VERSION = 1
TOOL_FILES = ("campaign.json", "run_manifest.json", "command.sh", "run.log", "status.json", "spec.json",
              "attempts.jsonl", "summary.json")
TRAINER_SUMMARY = "trainer_summary.json"


def spec_hash(row: Dict[str, Any]) -> str:
    keys = ("config", "seed", "overrides", "gpus", "timeout_secs", "retries")
    spec = {k: row.get(k) for k in keys}
    if int(row.get("nodes") or 1) > 1:  # a multi-node row (Slurm); one node keeps the hash rows always had
        spec["nodes"] = int(row["nodes"])
    text = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_dir(outputs: str, run_id: str) -> str:
    return os.path.join(outputs, run_id)


def owner(path: str) -> Optional[Dict[str, Any]]:
    data = read_json(os.path.join(path, "campaign.json"), "run ownership file")
    return data if isinstance(data, dict) else None


def claim(path: str, campaign_id: str, row: Dict[str, Any]) -> None:
    previous = owner(path) or {}
    history = list(previous.get("history", []))
    if previous.get("campaign_id") and previous.get("campaign_id") != campaign_id:
        history.append({"campaign_id": previous["campaign_id"], "spec_hash": previous.get("spec_hash"),
                        "until_utc": utc_now()})
    write_json(os.path.join(path, "campaign.json"), {"schema_version": SCHEMA_VERSION, "campaign_id": campaign_id,
                                                     "spec_hash": row["spec_hash"], "history": history})


def is_runner_summary(data: Any) -> bool:
    """Whether a summary.json is the runner's (a trainer may write one of its own there)."""
    return isinstance(data, dict) and "spec_hash" in data and "attempt_history" in data


def summary(path: str) -> Optional[Dict[str, Any]]:
    """The runner's summary.json, None while there is none. A file without the runner's marks is a
    trainer's own (it need not be JSON at all; the runner moves it aside when it concludes); one with
    them is the runner's and is checked against its schema (a corrupt one is exit 6)."""
    file = os.path.join(path, "summary.json")
    try:
        with open(file, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not is_runner_summary(data):
        return None
    checked: Dict[str, Any] = check("run summary", file, data)
    return checked


def keep_trainer_summary(path: str) -> Optional[str]:
    """Move a summary.json the runner did not write to trainer_summary.json (never over another file)."""
    target = os.path.join(path, "summary.json")
    if not os.path.isfile(target):
        return None
    try:
        data = read_json(target, "run summary")
    except Exception:  # noqa: BLE001 - not JSON: certainly not the runner's
        data = None
    if is_runner_summary(data):
        return None
    keep, n = os.path.join(path, TRAINER_SUMMARY), 1
    while os.path.exists(keep):
        n += 1
        keep = os.path.join(path, f"trainer_summary.{n}.json")
    os.rename(target, keep)
    return keep


def campaign_attempts(path: str, campaign_id: str) -> List[Dict[str, Any]]:
    """Every ended attempt of this run under ``campaign_id`` (all executor passes), oldest first."""
    return [record for record in jsonl_records(os.path.join(path, "attempts.jsonl"))
            if record.get("campaign_id") == campaign_id]


def jsonl_records(file: str) -> Iterator[Dict[str, Any]]:
    """The JSON objects of a .jsonl file, one per line; lines that are not objects are skipped, a missing
    or unreadable file has none (never raises)."""
    try:
        with open(file, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
    except OSError:
        return


def superseded(done: Dict[str, Any], status: Dict[str, Any]) -> bool:
    """An attempt began after this summary's verdict (a resume): the live status tells the truth."""
    return (status.get("created_utc") or "") > (done.get("ended_utc") or "")


def is_ok(path: str, campaign_spec_hash: str) -> bool:
    done = summary(path)
    if not done:
        return False
    finished = done.get("ok") is True or done.get("state") == "gated"  # a gate not met is final
    return bool(finished and done.get("spec_hash") == campaign_spec_hash)


# ----------------------------------------------------------------------------- metrics


def read_metrics(out_dir: str) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """(last, best-by-val_loss) records of the trainer's metrics.jsonl; never raises."""
    last: Optional[Dict[str, Any]] = None
    best: Optional[Dict[str, Any]] = None
    for record in jsonl_records(os.path.join(out_dir, "metrics.jsonl")):
        last = record
        loss = record.get("val_loss")
        if isinstance(loss, (int, float)) and (best is None or loss < best.get("val_loss", float("inf"))):
            best = record
    return last, best


def last_val_loss(out_dir: str) -> Optional[float]:
    """Cheap: the val_loss of the last metrics line (reads only the file's tail)."""
    path = os.path.join(out_dir, "metrics.jsonl")
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            value = json.loads(line).get("val_loss")
        except (ValueError, AttributeError):
            continue
        if isinstance(value, (int, float)):
            return float(value)
    return None


# ----------------------------------------------------------------------------- command


def override_value(overrides: List[str], key: str) -> Optional[str]:
    for word in reversed(overrides):
        name, _, value = word.partition("=")
        if name.lstrip("-") == key:
            return value
    return None


def set_override(overrides: List[str], key: str, value: str) -> List[str]:
    kept = [w for w in overrides if w.partition("=")[0].lstrip("-") != key]
    return [*kept, f"{key}={value}"]


def oom_retry_overrides(overrides: List[str], out_dir: str, batch_key: str, accum_key: str,
                        resume: List[str]) -> Tuple[Optional[List[str]], str]:
    """Half the batch, double the accumulation, resume; (None, why) if the batch size is unknown."""
    trainer_config = read_json(os.path.join(out_dir, "config.json"), "trainer config") if os.path.exists(
        os.path.join(out_dir, "config.json")) else None
    trainer_config = trainer_config if isinstance(trainer_config, dict) else {}
    batch_text = override_value(overrides, batch_key) or (
        str(trainer_config[batch_key]) if batch_key in trainer_config else None)
    accum_text = override_value(overrides, accum_key) or str(trainer_config.get(accum_key, 1))
    try:
        batch, accum = int(batch_text or ""), int(accum_text)
    except ValueError:
        return None, f"cannot halve {batch_key}: not in the overrides or in {out_dir}/config.json"
    if batch < 2:
        return None, f"{batch_key} is already {batch}; cannot halve it"
    new = set_override(overrides, batch_key, str(batch // 2))
    new = set_override(new, accum_key, str(accum * 2))
    for word in resume:
        new = set_override(new, word.partition("=")[0].lstrip("-"), word.partition("=")[2])
    return new, f"{batch_key} {batch}->{batch // 2}, {accum_key} {accum}->{accum * 2}, resuming"


def build_argv(python: str, entrypoint: str, config: str, seed: int, out_dir: str, overrides: List[str],
               nproc: int) -> List[str]:
    """torchrun --standalone --nproc_per_node=N <entrypoint> <config> seed=.. out_dir=.. <overrides>:
    every override is one argv word; nothing goes through a shell."""
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", entrypoint, config,
            f"seed={seed}", f"out_dir={out_dir}", *overrides]


def replay_script(argv: List[str], workdir: str, env: Dict[str, str], env_file: str, header: str) -> str:
    shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return "\n".join([
        "#!/usr/bin/env bash", f"# {header}", "# exact replay of this run (secrets come from the pod env file)",
        "set -euo pipefail", f"cd {shlex.quote(workdir)}",
        f"if [[ -r {shlex.quote(env_file)} ]]; then set -a; . {shlex.quote(env_file)}; set +a; fi",
        f"exec env {shown} {shlex.join(argv)}" if shown else f"exec {shlex.join(argv)}", "",
    ])


# ----------------------------------------------------------------------------- provenance


UNTRACKED_HASH_LIMIT = 16 << 20  # bytes of an untracked file hashed by content (larger: by size)


def _porcelain_entries(text: str) -> List[Tuple[str, str]]:
    """(XY, path) of ``git status --porcelain -z``; a rename's second (original) path is skipped."""
    entries: List[Tuple[str, str]] = []
    words = text.split("\0")
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if len(word) < 4:
            continue
        entries.append((word[:2], word[3:]))
        if word[0] in "RC":
            i += 1
    return entries


def git_provenance(repo: str, ignore: Sequence[str] = ()) -> Dict[str, Any]:
    """HEAD, whether the tree is dirty (``git status --porcelain``: changed, staged or untracked files)
    and a hash of the difference (``git diff HEAD --binary`` plus each untracked file's path and
    content), so runs from the same dirty tree can be told apart from runs from another one. Paths in
    ``ignore`` (the run venv, local_sync's out root, data: this tool's own, inside the checkout by
    default) and bytecode caches are not part of the tree."""
    info: Dict[str, Any] = {"repo": repo}
    code, sha = procs.run(["git", "-C", repo, "rev-parse", "HEAD"], timeout=30)
    info["git_sha"] = sha.strip() if code == 0 else None
    specs = ["--", ".", ":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/*.pyc"]
    top = os.path.realpath(repo)
    for path in ignore:
        rel = os.path.relpath(os.path.realpath(path), top) if path else ".."
        if rel != "." and not rel.startswith(".."):
            specs.append(f":(exclude){rel}")
    code, porcelain = procs.run(["git", "-C", repo, "status", "--porcelain", "-z", "--untracked-files=all", *specs],
                                timeout=60)
    dcode, diff = procs.run(["git", "-C", repo, "diff", "HEAD", "--binary", *specs], timeout=60)
    if code != 0 or dcode != 0:
        info.update(dirty=None, diff_sha256=None, changed_files=None, untracked_files=None)
        return info
    entries = _porcelain_entries(porcelain)
    untracked = sorted(path for xy, path in entries if xy == "??")
    digest = hashlib.sha256(diff.encode())
    for rel in untracked:
        digest.update(b"\0untracked\0" + rel.encode())
        full = os.path.join(repo, rel)
        try:
            size = os.path.getsize(full)
            if size <= UNTRACKED_HASH_LIMIT:
                with open(full, "rb") as handle:
                    digest.update(hashlib.sha256(handle.read()).digest())
            else:
                digest.update(f"size={size}".encode())
        except OSError:
            digest.update(b"unreadable")
    info["dirty"] = bool(entries)
    info["diff_sha256"] = digest.hexdigest() if entries else None
    info["changed_files"] = len(entries) - len(untracked)
    info["untracked_files"] = len(untracked)
    return info


PROVENANCE_FILE = ".workflow-provenance.json"


def _venv_stamp(venv: str) -> List[float]:
    """Changes when packages are installed into (or beside) the venv."""
    import glob

    stamps = []
    for path in [os.path.join(venv, "pyvenv.cfg"), *sorted(glob.glob(os.path.join(venv, "lib", "python*",
                                                                                    "site-packages")))]:
        try:
            stamps.append(os.stat(path).st_mtime)
        except OSError:
            stamps.append(0.0)
    return stamps


def environment_provenance(venv: str) -> Dict[str, Any]:
    """Torch version and pip freeze of the run venv. Both cost seconds, so checkout records them in
    the venv and the executor reuses that record while the venv is unchanged."""
    cached = read_json(os.path.join(venv, PROVENANCE_FILE), "venv provenance") if os.path.exists(
        os.path.join(venv, PROVENANCE_FILE)) else None
    if isinstance(cached, dict) and cached.get("stamp") == _venv_stamp(venv):
        return {k: v for k, v in cached.items() if k != "stamp"}
    info = _measure_environment(os.path.join(venv, "bin", "python"))
    try:
        write_json(os.path.join(venv, PROVENANCE_FILE), {**info, "stamp": _venv_stamp(venv)})
    except OSError:
        pass
    return info


def _measure_environment(python: str) -> Dict[str, Any]:
    code, out = procs.run([python, "-c", "import torch, json; print(json.dumps({'torch': torch.__version__, "
                                        "'cuda': torch.version.cuda}))"], timeout=300)
    torch_info = json.loads(out.strip().splitlines()[-1]) if code == 0 else {"torch": None, "error": procs.tail(out)}
    code, frozen = procs.run([python, "-m", "pip", "freeze", "--all"], timeout=300)
    return {**torch_info, "pip_freeze": frozen.strip().splitlines() if code == 0 else None,
            "host": socket.gethostname()}


def write_summary(path: str, campaign_id: str, row: Dict[str, Any], attempts: List[Dict[str, Any]],
                  out_dir: str, command: str, write: bool = True) -> Dict[str, Any]:
    """The run's summary.json; ``attempts`` are this pass's, the history has every pass's of the campaign.
    ``write=False``: only built (the caller completes it, then writes it once: no reader sees a part)."""
    final = attempts[-1]
    history = campaign_attempts(path, campaign_id) or attempts
    recovered = [str(a.get("failure_class")) for a in history[:-1]
                 if a.get("failure_class") and a.get("state") != "cancelled"]  # a stop is no failure
    last, best = read_metrics(out_dir)
    results = read_json(os.path.join(out_dir, "results.json"), "trainer results") if os.path.exists(
        os.path.join(out_dir, "results.json")) else None
    started, ended = history[0].get("started_utc"), final.get("ended_utc")
    start_s, end_s = parse_utc(started), parse_utc(ended)
    data = {
        "schema_version": SCHEMA_VERSION, "run_id": row["run_id"], "campaign_id": campaign_id,
        "ok": final["state"] == "success", "state": final["state"], "failure_class": final.get("failure_class"),
        "exit_code": final.get("exit_code"), "reason": final.get("reason"),
        "reason_line": final.get("reason_line"), "fatal_lines": final.get("fatal_lines"),
        "log": final.get("log"), "attempt": final.get("attempt"), "recovered_from": recovered,
        "attempts": len(history), "attempt_history": history, "started_utc": started, "ended_utc": ended,
        "duration_s": round(end_s - start_s, 1) if start_s and end_s else None, "spec_hash": row["spec_hash"],
        "final_metrics": last, "best_metrics": best, "trainer_results": results if isinstance(results, dict) else None,
        "out_dir": out_dir, "command": command,
    }
    keep_trainer_summary(path)
    if write:
        write_json(os.path.join(path, "summary.json"), data)
    return data


def attempt_record(path: str, attempt: int, extra: Dict[str, Any]) -> Dict[str, Any]:
    status = read_status(path) or {}
    keep = ("state", "failure_class", "exit_code", "signal", "reason", "started_utc", "ended_utc")
    return {"attempt": attempt, **{k: status.get(k) for k in keep}, **extra,
            "fatal_lines": (status.get("fatal") or {}).get("lines")}
