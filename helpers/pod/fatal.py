"""Recognise fatal errors in a training process's output.

The supervisor feeds each output line (without its newline) to one ``FatalMatcher`` per task, in
order; ``feed`` returns a ``FatalMatch`` for a known fatal error, and the supervisor stops the task
and marks it failed with ``match.failure_class``. ``exitcause.classify_exit`` classifies runs
that fail without a match. Rank prefixes added by torchrun / DDP (``[rank0]: ``, ``[default1]:``,
``[rank1]:[W...]``) are stripped before matching, and tracebacks are tracked per prefix, so one
rank's traceback interleaved with other ranks' lines is still one block. Only the text after a
line's last carriage return counts (tqdm redraws with ``\r``).

Single-line patterns (``DEFAULT_PATTERNS``; user patterns first, then these in order, first match
wins) fire at once. They are unanchored searches except data_file_not_found, data_error,
data_no_such_file, interrupted (also at the end) and nccl_timeout's ``[E... ProcessGroupNCCL...]``
alternative, which are anchored at the start of the text after the rank prefix. Decisions:
warning lines never match a default pattern: ``NCCL INFO|WARN|TRACE`` (NCCL WARNs are often
retried; a fatal failure then shows as an ``NCCL error`` / ``DistBackendError`` line), Python
``warnings`` lines (``...Warning: ``) and glog ``W`` lines (``[W1019 ...]``). A bare ``Permission
denied`` (e.g. from ``ls``) is not auth, only ``Permission denied (publickey``. ``No such file or
directory`` is data_missing only with a data-file extension and not from ``ls|stat|find|du|file``
probes. ``OutOfMemoryError`` needs its exception colon (``...OutOfMemoryError handler installed``
is no match) and ``CUDA out of memory`` PyTorch's period. Config echoes (``nccl_timeout=600``,
``MAX_TRAIN_SAMPLES: 500``) match nothing: no pattern matches a bare number or lower-case word.

Tracebacks (python_exception, pattern ``python_traceback``): a block starts at a line ending in
``Traceback (most recent call last):`` (after a rank prefix or a tqdm bar) and ends at its
exception line, the first unindented line after the frames that looks like ``Name`` or
``module.Name: message`` (other unindented lines, up to 20, are interleaved output, matched on
their own). In a block, frame and source lines are never matched; the class comes from the first
exception line, message line after it or exception line earlier in a chain that matches a user or
default pattern (``torch.OutOfMemoryError: ...`` -> oom), else python_exception. A chained
traceback ("During handling of the above exception..." / "The above exception was the direct
cause...") can only follow the exception line, so a block's match is held back: ``feed`` returns
it 30 lines after the exception line (or chain header), or when the same prefix starts an
unchained traceback; with ``hold_secs`` set (the supervisor uses 0.5 s), ``feed`` or
``release_due()`` also returns it that long after the exception line (or chain header), however
much other output keeps coming; otherwise ``flush()`` does, which the supervisor calls at end of
output and after 0.3 s of quiet (``pending`` says a match is held). A chain gives one match, at
its final exception line. A traceback cut off before its exception line never fires.

A complete traceback fires even when a program logged a handled exception (that cannot be told
apart in general): the supervisor stops the run, since other DDP ranks would otherwise hang.
``python_exception=False`` disables that class (tracebacks of a specific class still fire).
torchrun's own ``ChildFailedError`` traceback never fires python_exception: the worker's output
has the cause, or the worker died by a signal, which ``exitcause.classify_exit`` classifies.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .errors import ExitCode, WorkflowError

FAILURE_CLASSES = ("oom", "cuda", "nccl", "disk_full", "data_missing", "auth", "python_exception",
                   "timeout", "stalled", "killed", "lost", "nonzero_exit")  # fmt: skip


@dataclass(frozen=True)
class FatalPattern:
    """One fatal-error pattern, searched in a line after its rank prefix is stripped."""

    name: str
    regex: re.Pattern[str]
    failure_class: str
    description: str


@dataclass(frozen=True)
class FatalMatch:
    """A fatal error seen in the output. ``lines`` are raw lines as fed: for a single-line pattern
    that line; for a traceback its header, its last ``File`` frame line (if any) and its final
    exception line, plus the line that gave the class if that is another one (an exception
    earlier in a chain, a message line). ``line_number``: of that line / the exception line;
    ``first_line_number``: of the match's first line (the traceback header; else line_number).
    Lines are numbered from 1 in the order fed."""

    failure_class: str
    pattern: str
    description: str
    lines: tuple[str, ...]
    line_number: int
    first_line_number: int = field(default=0, compare=False)

    @property
    def first_line(self) -> int:
        return self.first_line_number or self.line_number


_DATA_EXT = r"\.(?:bin|npy|npz|parquet|arrow|jsonl|csv|tsv|txt|idx|tfrecords?|tar|zst)\b"
DEFAULT_PATTERNS: tuple[FatalPattern, ...] = tuple(FatalPattern(n, re.compile(r), c, d) for n, c, r, d in (
    ("cuda_oom", "oom", r"\b(?:CUDA|HIP) out of memory\.|OutOfMemoryError: |\bCUDA error: out of memory"
     r"|RESOURCE_EXHAUSTED: Out of memory", "GPU out of memory"),
    ("cublas_alloc_failed", "oom", r"CUBLAS_STATUS_ALLOC_FAILED", "cuBLAS could not allocate GPU memory"),
    ("dataloader_killed", "oom", r"DataLoader worker \(pid \d+\) is killed by signal: Killed",
     "a DataLoader worker was SIGKILLed (host out of memory)"),
    ("cuda_error", "cuda", r"\bCUDA error: |\bcuDNN error: ",
     "CUDA error (device-side assert, illegal memory access, ...)"),
    ("cuda_assert", "cuda", r"\.cu:\d+: .*Assertion .* failed", "device-side assertion failed in a kernel"),
    ("gpu_hardware", "cuda", r"uncorrectable ECC error|NVRM: Xid|GPU has fallen off the bus",
     "GPU hardware fault (ECC error, Xid)"),
    ("cuda_unavailable", "cuda", r"CUDA driver version is insufficient|no CUDA-capable device is detected"
     r"|No CUDA GPUs are available|Found no NVIDIA driver", "no usable GPU or CUDA driver"),
    ("nccl_error", "nccl", r"\bNCCL [Ee]rror\b|\bnccl(?:InternalError|SystemError|UnhandledCudaError"
     r"|InvalidUsage|InvalidArgument|RemoteError)\b|\bDistBackendError\b|NCCL communicator was aborted",
     "NCCL / distributed backend error"),
    ("nccl_timeout", "nccl", r"Watchdog caught collective operation timeout|NCCL operations have failed or"
     r" timed out|Heartbeat monitor timed out|ProcessGroupNCCL's watchdog got stuck|(?:Process group w|W)"
     r"atchdog thread terminated with exception|^\[?E[\d ][^\]]*ProcessGroupNCCL[^\]]*\].*(?:[Tt]imeout"
     r"|[Tt]imed out|[Ee]rror|[Ee]xception|[Aa]bort)", "NCCL timeout or ProcessGroupNCCL watchdog failure"),
    ("disk_full", "disk_full", r"No space left on device|Disk quota exceeded", "disk full or quota exceeded"),
    ("checkpoint_write_failed", "disk_full", r"PytorchStreamWriter failed writing file"
     r"|Error: \[enforce fail at inline_container\.cc:\d+\] \. unexpected pos",
     "torch.save could not write its file (usually a full disk)"),
    ("data_file_not_found", "data_missing", r"^(?:builtins\.)?FileNotFoundError: .*(?:[Dd]ata|[Ss]hard|"
     + _DATA_EXT + ")", "a data file or shard is missing"),
    ("data_error", "data_missing", r"^[\w./-]*\.py: data error:", "the training script reported bad data"),
    ("data_no_such_file", "data_missing", r"^(?!(?:ls|stat|find|du|file): ).*(?:" + _DATA_EXT
     + r"['\"]?: No such file or directory|No such file or directory: ['\"]?[^'\"]*" + _DATA_EXT + ")",
     "a data file is missing"),
    ("dataset_not_found", "data_missing", r"\bDatasetNotFoundError\b", "the dataset does not exist"),
    ("ssh_publickey", "auth", r"Permission denied \(publickey", "SSH key rejected"),
    ("wandb_auth", "auth", r"wandb: ERROR\b.*(?:API key|api_key|\b40[13]\b)|UsageError: api_key not "
     r"configured|wandb\.errors\.(?:errors\.)?AuthenticationError", "W&B rejected or lacks the API key"),
    ("http_unauthorized", "auth", r"\b40[13] Client Error\b|\bHTTP Error 40[13]\b|Invalid credentials"
     r"|Invalid user token", "a server rejected the credentials (HTTP 401/403)"),
    ("hf_gated", "auth", r"(?:GatedRepoError|RepositoryNotFoundError)\b.*\b40[13]\b"
     r"|You are trying to access a gated repo", "Hugging Face refused the repo (gated, or no/invalid token)"),
    ("interrupted", "killed", r"^(?:[\w.]+\.)?(?:KeyboardInterrupt|SignalException)(?::.*)?$",
     "the process was interrupted by a signal"),
))  # fmt: skip

_HEADER_RE = re.compile(r"(?:^|\])\s*Traceback \(most recent call last\):$")
PYTHON_TRACEBACK = FatalPattern("python_traceback", _HEADER_RE, "python_exception",
                                "unhandled Python exception (a complete traceback)")  # fmt: skip

# Every default pattern's match contains one of these keywords and an upper-case letter, except
# data_error's (it contains "data error"); lines without skip all default regexes.
_PREFILTER = re.compile("|".join(map(re.escape, sorted((
    "Traceback", "Error", "ERROR", "CUDA", "HIP out", "Out of memory", "CUBLAS", "DataLoader", "DNN",
    "Assertion", "ECC", "NVRM", "NVIDIA", "GPU has fallen", "NCCL", "Watchdog", "Process group watchdog",
    "Heartbeat", "No space", "No such file", "Disk quota", "PytorchStreamWriter", "data error",
    "Permission denied", "Invalid", "You are trying to access", "KeyboardInterrupt", "SignalException",
)))))  # fmt: skip
_GUARD_RE = re.compile(r"\bNCCL (?:INFO|WARN|TRACE)\b|\b[A-Z]\w*Warning: |^\[W[\d ]|^W\d{4} \d")
_PREFIX_RE = re.compile(r"(?:\[(?:rank|default)?\d+\]: ?)+")
_EXC_RE = re.compile(r"[A-Za-z_][\w.<>]*(?::.*)?$")
_CHAIN_RE = re.compile(r"(?:During handling of the above exception, another exception occurred|The above "
                       r"exception was the direct cause of the following exception):$")  # fmt: skip
_NO_GENERIC_RE = re.compile(r"(?:[\w.]+\.)?ChildFailedError\b")
_FRAMES, _AFTER, _CHAIN = 0, 1, 2  # block phases: reading frames, after an exception line, chained
_WINDOW = 30  # lines after an exception line (or chain header) before its match is released
_JUNK_LIMIT = 20  # unindented non-exception lines tolerated among a block's frames


def _may_match(text: str) -> bool:
    """False if no default pattern nor a traceback header can match: cheap, for most lines."""
    if text.lower() == text:  # no upper-case letter: ~10x cheaper than the keyword search
        return "data error" in text
    return _PREFILTER.search(text) is not None


def _split(line: str) -> tuple[str, str]:
    """(rank prefix, text): the text is right-stripped and cut after its last carriage return."""
    key = ""
    if line.startswith("["):
        m = _PREFIX_RE.match(line)
        if m is not None:
            key, line = m.group().replace(" ", ""), line[m.end() :]
    line = line.rstrip()
    return key, line[line.rfind("\r") + 1 :]


class _Block:
    """A traceback in progress (and a chain after it) for one rank prefix."""

    def __init__(self, header: str, header_no: int) -> None:
        self.header, self.header_no, self.phase, self.junk = header, header_no, _FRAMES, 0
        self.mark_t = 0.0
        self.last_frame: str | None = None
        self.exc_line: str | None = None
        self.exc_text, self.exc_no, self.mark_no = "", 0, 0
        self.pattern: FatalPattern | None = None
        self.cause_line: str | None = None


class FatalMatcher:
    """Stateful matcher for one output stream: call ``feed`` once per line, in order, and
    ``flush`` when the output has been quiet for a moment and at its end (module doc). With
    ``hold_secs``, a held traceback match is also released that long after its exception line
    (``clock`` tells the time); call ``release_due`` when no line arrives to get it on time."""

    def __init__(self, user_patterns: Iterable[FatalPattern] = (), python_exception: bool = True,
                 hold_secs: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._user = tuple(user_patterns)
        self._python_exception = python_exception
        self._hold = hold_secs
        self._clock = clock
        self._blocks: dict[str, _Block] = {}
        self._out: deque[FatalMatch] = deque()
        self._n = 0

    @property
    def pending(self) -> bool:
        """True while a match is held back (a complete traceback waiting for a possible chain)."""
        return bool(self._out) or any(b.exc_line is not None for b in self._blocks.values())

    @property
    def lines_fed(self) -> int:
        """How many lines were fed so far (the number of the last one)."""
        return self._n

    def release_due(self) -> FatalMatch | None:
        """Release held matches whose ``hold_secs`` have passed (tracebacks still in their frames
        are kept); returns the first, later calls return any others."""
        self._expire()
        return self._out.popleft() if self._out else None

    def _expire(self) -> None:
        now = self._clock() if self._hold is not None else 0.0
        for k, b in list(self._blocks.items()):
            if b.phase != _FRAMES and (self._n - b.mark_no > _WINDOW
                                       or (self._hold is not None and now - b.mark_t >= self._hold)):
                self._finish(k)

    def feed(self, line: str) -> FatalMatch | None:
        self._n += 1
        if self._blocks or self._user or _may_match(line):
            self._process(line)
        return self._out.popleft() if self._out else None

    def flush(self) -> FatalMatch | None:
        """Release held traceback matches (tracebacks without an exception line are dropped);
        returns the first, later ``feed``/``flush`` calls return any others."""
        for key in list(self._blocks):
            self._finish(key)
        return self._out.popleft() if self._out else None

    def _process(self, line: str) -> None:
        key, text = _split(line)
        if self._blocks:
            self._expire()
        block = self._blocks.get(key)
        if block is not None:
            self._feed_block(key, block, line, text)
        elif _HEADER_RE.search(text):
            self._blocks[key] = _Block(line, self._n)
        else:
            self._single(line, text)

    def _single(self, line: str, text: str) -> None:
        p = self._match_specific(text)
        if p is not None:
            self._out.append(FatalMatch(p.failure_class, p.name, p.description, (line,), self._n))

    def _feed_block(self, key: str, b: _Block, line: str, text: str) -> None:
        if b.phase == _FRAMES:
            if text[:1].isspace():
                if text.lstrip().startswith('File "'):
                    b.last_frame = line
            elif _HEADER_RE.search(text):  # the previous traceback was cut short
                b.header, b.header_no, b.last_frame, b.junk = line, self._n, None, 0
            elif _EXC_RE.match(text):
                b.exc_line, b.exc_text, b.exc_no, b.mark_no, b.phase = line, text, self._n, self._n, _AFTER
                b.mark_t = self._clock() if self._hold is not None else 0.0
                self._classify(b, line, text)
            else:  # interleaved output: matched on its own
                b.junk += 1
                if b.junk > _JUNK_LIMIT:
                    self._finish(key)
                self._single(line, text)
        elif not text:
            pass
        elif _CHAIN_RE.match(text):
            b.phase, b.mark_no = _CHAIN, self._n
            b.mark_t = self._clock() if self._hold is not None else 0.0
        elif _HEADER_RE.search(text):
            if b.phase == _CHAIN:  # the chain's first header stays the block's first line
                b.phase, b.header, b.last_frame, b.junk = _FRAMES, line, None, 0
            else:
                self._finish(key)
                self._blocks[key] = _Block(line, self._n)
        elif b.phase == _AFTER:  # a message line of the exception
            self._classify(b, line, text)

    def _classify(self, b: _Block, line: str, text: str) -> None:
        if b.pattern is None:
            b.pattern = self._match_specific(text)
            b.cause_line = line if b.pattern is not None else None

    def _match_specific(self, text: str) -> FatalPattern | None:
        for p in self._user:
            if p.regex.search(text):
                return p
        if not _may_match(text) or _GUARD_RE.search(text):
            return None
        return next((p for p in DEFAULT_PATTERNS if p.regex.search(text)), None)

    def _finish(self, key: str) -> None:
        b = self._blocks.pop(key)
        p = b.pattern
        if b.exc_line is None:
            return
        if p is None:
            if not self._python_exception or _NO_GENERIC_RE.match(b.exc_text):
                return
            p = PYTHON_TRACEBACK
        lines = [b.header] + ([b.last_frame] if b.last_frame is not None else []) + [b.exc_line]
        if b.cause_line is not None and b.cause_line != b.exc_line:
            lines.append(b.cause_line)
        self._out.append(FatalMatch(p.failure_class, p.name, p.description, tuple(lines), b.exc_no, b.header_no))


def parse_user_patterns(text: str, source: str) -> list[FatalPattern]:
    """Parse a patterns file: one ``CLASS REGEX`` per line, CLASS from FAILURE_CLASSES and REGEX the
    rest of the line (stripped), a Python regex searched in each line after its rank prefix.
    Blank lines and lines starting with ``#`` are ignored. User patterns are tried before the
    defaults, on every line, so keep them cheap. A bad line raises a one-line usage WorkflowError."""
    hint = "write CLASS REGEX with CLASS one of " + ", ".join(FAILURE_CLASSES)
    patterns: list[FatalPattern] = []
    for number, raw in enumerate(text.splitlines(), 1):
        parts = raw.strip().split(None, 1)
        if not parts or parts[0].startswith("#"):
            continue
        problem, compiled = "", None
        if parts[0] not in FAILURE_CLASSES:
            problem = f"unknown failure class {parts[0]!r}"
        elif len(parts) < 2:
            problem = f"no regex after {parts[0]!r}"
        else:
            try:
                compiled = re.compile(parts[1])
            except re.error as exc:
                problem = f"invalid regex {parts[1]!r}: {exc}"
            else:
                if compiled.search("") is not None:
                    problem = f"regex {parts[1]!r} matches an empty line, so it would stop every run"
        if problem or compiled is None:
            message = f"{source} line {number}: {problem}; {hint}"
            raise WorkflowError(message.replace("\n", " "), ExitCode.USAGE)
        description = f"user pattern {parts[1]!r} ({source} line {number})"
        patterns.append(FatalPattern(f"user:{source}:{number}", compiled, parts[0], description))
    return patterns
