"""fetch-run / fetch-all: copy runs into LOCAL_ARTIFACTS_DIR/<run_id>/, incrementally, then verify.

Over SSH: one rsync over the same SSH settings (pinned host key, BatchMode, timeouts) with an
explicit file list from the pod; on `local`: a plain copy that skips unchanged files. Every file
the pod listed is then checked locally by size and sha256 before the fetch reports success.
Nothing is written outside LOCAL_ARTIFACTS_DIR: run ids are validated and every path is checked.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from helpers.errors import ExitCode, WorkflowError
from helpers.pod.fetchlist import sha256_file
from helpers.pod.ids import check_id
from helpers.render import table
from helpers.session import Session

if TYPE_CHECKING:
    from helpers.progress import Progress

LOCAL_CACHE = ".wf-fetch-checksums.json"


def _dest_root(session: Session) -> Path:
    root = session.cfg.local_path("LOCAL_ARTIFACTS_DIR")
    assert root is not None
    if root.exists() and not root.is_dir():  # before anything is fetched: one line, not a traceback later
        raise WorkflowError(f"LOCAL_ARTIFACTS_DIR={root} is a file, not a folder; point LOCAL_ARTIFACTS_DIR at a "
                            "folder (it is created if missing)", ExitCode.USAGE)
    return root.resolve()


def _safe_rel(rel: str) -> str:
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise WorkflowError(f"the pod listed an unsafe path {rel!r}; refusing to write it", ExitCode.REFUSED)
    return str(path)


def _plan(session: Session, listing: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """(run_id, relative path, size, sha256) of every file to fetch, checked to stay inside the artifacts dir."""
    root = _dest_root(session)
    items = []
    for run in listing["runs"]:
        run_id = check_id(run["run_id"], "run id")
        target = (root / run_id).resolve()
        if target.parent != root:
            raise WorkflowError(f"run id {run_id!r} would write outside {root}", ExitCode.REFUSED)
        for rel, size, digest in run["files"]:
            items.append((run_id, _safe_rel(rel), int(size), str(digest)))
    return items


def human_size(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _copy_local(listing: dict[str, Any], items: list[tuple[str, str, int, str]], root: Path) -> None:
    from helpers.progress import Progress

    sources = {run["run_id"]: Path(run["path"]) for run in listing["runs"]}
    progress = Progress("fetch")  # on a TTY: files and bytes copied, rate, ETA
    total, copied = sum(item[2] for item in items), 0
    for number, (run_id, rel, size, _) in enumerate(items):
        progress.counts(number, len(items), copied, total)
        copied += size
        src, dst = sources[run_id] / rel, root / run_id / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.partial")
        try:
            shutil.copy2(src, tmp)
        except FileNotFoundError:
            continue  # vanished meanwhile (a running run): named by the verification
        os.replace(tmp, dst)
    progress.counts(len(items), len(items), total, total, force=True)
    progress.done()


def _rsync(session: Session, listing: dict[str, Any], items: list[tuple[str, str, int, str]], root: Path) -> None:
    from helpers.progress import Progress

    transport = session.transport()
    shell = transport.rsync_shell()
    assert shell is not None
    host = transport.rsync_host()
    progress = Progress("fetch")  # on a TTY: our own line (files, bytes, rate, ETA) from rsync's progress2 counts
    file_list = "".join(f"{run_id}/{rel}\n" for run_id, rel, _, _ in items)
    argv = ["rsync", "-a", "--ignore-times", "--partial", "--timeout=300", "--safe-links", "--no-devices",
            "--no-specials", "--protect-args",
            "--files-from=-", "-e", shlex.join(shell), "--info=progress2" if progress.on else "--stats",
            f"{host}:{listing['outputs'].rstrip('/')}/", f"{root}/"]
    root.mkdir(parents=True, exist_ok=True)
    if progress.on:
        code, errors = _rsync_counting(argv, file_list, progress, len(items), sum(item[2] for item in items))
    else:
        result = subprocess.run(argv, input=file_list, text=True, stdout=sys.stderr, stderr=subprocess.PIPE)
        code, errors = result.returncode, result.stderr
    if code not in (0, 24):  # 24: a file vanished meanwhile (a running run): verified below
        raise WorkflowError(f"rsync from {transport.description} failed (exit {code}): "
                            f"{errors.strip().splitlines()[-1] if errors.strip() else ''}",
                            ExitCode.TRANSPORT if code in (12, 30, 35, 255) else ExitCode.FAILED)


def _rsync_counting(argv: list[str], file_list: str, progress: Progress, files: int, size: int) -> tuple[int, str]:
    """Run rsync with its progress2 output read here and shown as the tool's own line; (exit code, stderr)."""
    import re
    import tempfile

    from helpers.progress import rsync_counts

    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(file_list.encode())
        proc.stdin.close()
        pending = b""
        while chunk := os.read(proc.stdout.fileno(), 65536):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for line in reversed(lines):  # the newest count in this chunk is the one to show
                counts = rsync_counts(line.decode("utf-8", "replace"))
                if counts is not None:
                    progress.counts(min(counts[1], files), files, min(counts[0], size), size)
                    break
        code = proc.wait()
        if code == 0:
            progress.counts(files, files, size, size, force=True)
        progress.done()
        errors.seek(0)
        return code, errors.read().decode("utf-8", "replace")


def _verify(root: Path, items: list[tuple[str, str, int, str]]) -> list[str]:
    """Paths that are missing or differ; local checksums are cached by (size, mtime). Before the copy it
    picks what to fetch (only those: ``--ignore-times`` then copies each even when rsync's size + mtime
    check would skip it); after, it verifies every file."""
    from helpers.progress import Progress

    bad: list[str] = []
    caches: dict[str, dict[str, Any]] = {}
    progress, total, seen = Progress("verify"), sum(item[2] for item in items), 0
    for number, (run_id, rel, size, digest) in enumerate(items):
        progress.counts(number, len(items), seen, total)
        seen += size
        cache = caches.setdefault(run_id, _load_cache(root / run_id / LOCAL_CACHE))
        path = root / run_id / rel
        try:
            stat = path.stat()
        except FileNotFoundError:
            bad.append(f"{run_id}/{rel} (missing)")
            continue
        key = [stat.st_size, stat.st_mtime_ns]
        cached = cache.get(rel)
        local = cached[2] if cached and cached[:2] == key else sha256_file(str(path))
        cache[rel] = [*key, local]
        if stat.st_size != size or local != digest:
            bad.append(f"{run_id}/{rel} (size {stat.st_size} vs {size})" if stat.st_size != size else
                       f"{run_id}/{rel} (checksum differs)")
    progress.done()
    for run_id, cache in caches.items():
        (root / run_id).mkdir(parents=True, exist_ok=True)
        (root / run_id / LOCAL_CACHE).write_text(json.dumps(cache))
    return bad


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _fetch(session: Session, args: dict[str, Any]) -> int:
    args["include_checkpoints"] = session.cfg.flag("FETCH_INCLUDE_CHECKPOINTS")
    root = _dest_root(session)
    if session.dry_run:
        session.print(f"would list {', '.join(args.get('run_ids') or []) or 'the campaign runs'} on "
                      f"{session.transport_label()} and copy them into {root}/<run_id>/ "
                      f"({'with' if args['include_checkpoints'] else 'without'} checkpoints), then verify "
                      "every file's size and sha256")
        return 0
    listing = session.call("fetch-list", args, timeout=600)
    items = _plan(session, listing)
    stale = {path.split(" (", 1)[0] for path in _verify(root, items)}
    todo = [item for item in items if f"{item[0]}/{item[1]}" in stale]
    if todo and session.transport().kind == "local":
        _copy_local(listing, todo, root)
    elif todo:
        _rsync(session, listing, todo, root)
    bad = _verify(root, items)
    not_final = [run["run_id"] for run in listing["runs"] if not run["final"]]
    changing = [b for b in bad if b.split("/", 1)[0] in not_final]
    hard = [b for b in bad if b not in changing]
    fetched = {run["run_id"]: 0 for run in listing["runs"]}
    for run_id, *_ in todo:
        fetched[run_id] += 1
    runs = [{"run_id": run["run_id"], "state": run.get("state"), "final": bool(run["final"]),
             "files": len(run["files"]), "bytes": int(run["bytes"]), "fetched_files": fetched[run["run_id"]]}
            for run in listing["runs"]]
    report = {"campaign_id": listing.get("campaign_id"), "dest": str(root), "runs": runs, "missing": listing["missing"],
              "unsubmitted": listing.get("unsubmitted") or [],
              "mismatched": hard, "changed_while_running": changing, "not_final": not_final,
              "fetched_files": len(todo), "up_to_date": not todo and not bad}
    if session.as_json:
        session.emit_json(report)
    else:
        rows = [[r["run_id"], str(r["state"] or "-"), str(r["files"]), human_size(r["bytes"]), str(r["fetched_files"])]
                for r in runs]
        for line in table(["RUN_ID", "STATE", "FILES", "SIZE", "FETCHED"], rows):
            session.print(line)
        for run in listing["runs"]:
            if run["skipped_symlinks"]:
                session.print(f"{run['run_id']}: symlinks not followed: {', '.join(run['skipped_symlinks'][:5])}")
        if listing["missing"]:
            session.print(f"not on the pod (never started): {', '.join(listing['missing'])}")
        if listing.get("unsubmitted"):
            session.print(f"not submitted yet (later parts of the sweep): {len(listing['unsubmitted'])} row(s)")
        if changing:
            session.print(f"still running, changed during the fetch (fetch again later): {', '.join(changing[:5])}")
    if hard:
        raise WorkflowError(f"fetch incomplete: {len(hard)} file(s) did not arrive intact ({', '.join(hard[:3])}); run "
                            "the fetch again", ExitCode.FAILED)
    if not session.as_json:
        session.print(fetch_verdict(items, changing, not_final, root, len(todo)))
    return 0


def fetch_verdict(items: list[tuple[str, str, int, str]], changing: list[str], not_final: list[str],
                  root: Path, fetched: int) -> str:
    """The last line of a fetch: what was copied and verified, and which runs are only a snapshot."""
    moved = {b.split(" (", 1)[0] for b in changing}
    good = [item for item in items if f"{item[0]}/{item[1]}" not in moved]
    total = sum(size for _, _, size, _ in good)
    if fetched:
        line = f"fetched {fetched} file(s) and verified all {len(good)}, {human_size(total)}, in {root}"
    else:
        line = f"up to date, verified {len(good)} file(s), {human_size(total)}, in {root}"
    if not_final:
        shown = ", ".join(not_final[:5]) + (", ..." if len(not_final) > 5 else "")
        line = (f"fetched {fetched} of {len(items)} file(s) into {root}; verified {len(good)}"
                + (f" ({len(changing)} changed during the fetch)" if changing else "")
                + f"; NOT FINAL: {len(not_final)} run(s) still running or not concluded ({shown}): their copies are "
                "a snapshot; fetch again when they end")
    return line


def cmd_fetch_run(session: Session) -> int:
    run_id = check_id(session.options.run_id, "run id")
    return _fetch(session, {"run_ids": [run_id]})


def cmd_fetch_all(session: Session) -> int:
    return _fetch(session, {"all": True, "campaign": session.options.campaign})
