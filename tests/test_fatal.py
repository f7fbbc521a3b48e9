"""Tests for helpers/pod/fatal.py (fatal-error patterns, tracebacks, user patterns) and
helpers/pod/exitcause.py (exit classes, OOM evidence)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from helpers.pod import exitcause
from helpers.pod.errors import ExitCode, WorkflowError
from helpers.pod.exitcause import (
    classify_exit,
    exit_signal,
    kernel_oom_killed,
    kernel_oom_killed_pids,
    oom_kill_count,
    oom_verdict,
)
from helpers.pod.fatal import (
    DEFAULT_PATTERNS,
    FAILURE_CLASSES,
    FatalMatch,
    FatalMatcher,
    parse_user_patterns,
)

# (line, failure_class, pattern name): each must match on its own, at once.
POSITIVE = [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
     "of 79.15 GiB of which 1.06 GiB is free. Including non-PyTorch memory, this process has 78.08 GiB "
     "memory in use.", "oom", "cuda_oom"),
    ("[rank1]: torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 1; 23.69 "
     "GiB total capacity; 22.51 GiB already allocated)", "oom", "cuda_oom"),
    ("RuntimeError: CUDA out of memory. Tried to allocate 512.00 MiB (GPU 0; 15.78 GiB total capacity; "
     "14.20 GiB already allocated; 113.19 MiB free; 14.50 GiB reserved in total by PyTorch)", "oom",
     "cuda_oom"),
    ("torch.OutOfMemoryError: HIP out of memory. Tried to allocate 1.00 GiB. GPU 0 has a total capacity of "
     "63.98 GiB of which 0 bytes is free.", "oom", "cuda_oom"),
    ("RuntimeError: CUDA error: out of memory", "oom", "cuda_oom"),
    ("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
     "1073741824 bytes.", "oom", "cuda_oom"),
    ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "oom",
     "cublas_alloc_failed"),
    ("RuntimeError: DataLoader worker (pid 4242) is killed by signal: Killed. ", "oom", "dataloader_killed"),
    ("RuntimeError: CUDA error: device-side assert triggered", "cuda", "cuda_error"),
    ("[rank0]: RuntimeError: CUDA error: an illegal memory access was encountered", "cuda", "cuda_error"),
    ("RuntimeError: CUDA error: uncorrectable ECC error encountered", "cuda", "cuda_error"),
    ("RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR", "cuda", "cuda_error"),
    ("/pytorch/aten/src/ATen/native/cuda/Loss.cu:250: nll_loss_forward_reduce_cuda_kernel_2d: block: [0,0,0],"
     " thread: [5,0,0] Assertion `t >= 0 && t < n_classes` failed.", "cuda", "cuda_assert"),
    ("NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.", "cuda",
     "gpu_hardware"),
    ("RuntimeError: The GPU reported an uncorrectable ECC error", "cuda", "gpu_hardware"),
    ("RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and "
     "installed a driver from http://www.nvidia.com/Download/index.aspx", "cuda", "cuda_unavailable"),
    ("RuntimeError: No CUDA GPUs are available", "cuda", "cuda_unavailable"),
    ("cudaGetDeviceCount returned 100: no CUDA-capable device is detected", "cuda", "cuda_unavailable"),
    ("CUDA driver version is insufficient for CUDA runtime version", "cuda", "cuda_unavailable"),
    ("[rank0]:[E1019 12:00:00.123 ProcessGroupNCCL.cpp:1414] [PG 0 Rank 0] Process group watchdog thread "
     "terminated with exception: CUDA error: an illegal memory access was encountered", "cuda", "cuda_error"),
    ("torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp"
     ":1970, unhandled system error (run with NCCL_DEBUG=INFO for details), NCCL version 2.20.5", "nccl",
     "nccl_error"),
    ("ncclInternalError: Internal check failed.", "nccl", "nccl_error"),
    ("[default1]:ncclUnhandledCudaError: Call to CUDA function failed.", "nccl", "nccl_error"),
    ("RuntimeError: NCCL communicator was aborted on rank 2.", "nccl", "nccl_error"),
    ("[rank0]:[E1019 12:00:00.123456 1234 torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:616] [Rank 0] "
     "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5, OpType=ALLREDUCE, NumelIn=1, "
     "NumelOut=1, Timeout(ms)=600000) ran for 600012 milliseconds before timing out.", "nccl",
     "nccl_timeout"),
    ("[E ProcessGroupNCCL.cpp:474] [Rank 1] Some NCCL operations have failed or timed out. Due to the "
     "asynchronous nature of CUDA kernels, subsequent GPU operations might run on corrupted/incomplete "
     "data.", "nccl", "nccl_timeout"),
    ("[rank3]:[E1019 12:10:00.000 ProcessGroupNCCL.cpp:1316] [PG 0 Rank 3] Heartbeat monitor timed out! "
     "Process will be terminated after dumping debug info. workMetaList_.size()=1", "nccl", "nccl_timeout"),
    ("[rank2]:[E1019 12:10:00.000 ProcessGroupNCCL.cpp:1595] [PG 0 Rank 2] Exception (either an error or "
     "timeout) detected by watchdog at work: 25, last enqueued NCCL work: 25", "nccl", "nccl_timeout"),
    ("OSError: [Errno 28] No space left on device: '/workspace/out/ckpt.pt'", "disk_full", "disk_full"),
    ("OSError: [Errno 122] Disk quota exceeded", "disk_full", "disk_full"),
    ("RuntimeError: [enforce fail at inline_container.cc:595] . unexpected pos 8519872 vs 8519760",
     "disk_full", "checkpoint_write_failed"),
    ("RuntimeError: PytorchStreamWriter failed writing file data/12: file write failed", "disk_full",
     "checkpoint_write_failed"),
    ("FileNotFoundError: [Errno 2] No such file or directory: 'data/openwebtext/train.bin'", "data_missing",
     "data_file_not_found"),
    ("[rank0]: FileNotFoundError: [Errno 2] No such file or directory: '/workspace/fineweb/shard_00012.npy'",
     "data_missing", "data_file_not_found"),
    ("train.py: data error: expected 1024 tokens per row, got 1000", "data_missing", "data_error"),
    ("cat: /mnt/corpus/val.parquet: No such file or directory", "data_missing", "data_no_such_file"),
    ("OSError: [Errno 2] No such file or directory: '/mnt/tok/train_000.arrow'", "data_missing",
     "data_no_such_file"),
    ("datasets.exceptions.DatasetNotFoundError: Dataset 'my-org/private-set' doesn't exist on the Hub or "
     "cannot be accessed.", "data_missing", "dataset_not_found"),
    ("git@github.com: Permission denied (publickey).", "auth", "ssh_publickey"),
    ("wandb: ERROR API key must be 40 characters long, yours was 8", "auth", "wandb_auth"),
    ("wandb: ERROR Error while calling W&B API: user is not logged in (<Response [401]>)", "auth",
     "wandb_auth"),
    ("wandb.errors.errors.UsageError: api_key not configured (no-tty). call wandb.login(key=[your_api_key])",
     "auth", "wandb_auth"),
    ("requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: "
     "https://huggingface.co/api/models/meta-llama/Llama-3-8B", "auth", "http_unauthorized"),
    ("urllib.error.HTTPError: HTTP Error 401: Unauthorized", "auth", "http_unauthorized"),
    ("huggingface_hub.errors.HfHubHTTPError: Invalid credentials in Authorization header", "auth",
     "http_unauthorized"),
    ("huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-6651f2a3-1b2c3d4e5f)",
     "auth", "http_unauthorized"),
    ("huggingface_hub.utils._errors.RepositoryNotFoundError: 401 (Request ID: Root=1-6651f2a3)", "auth",
     "hf_gated"),
    ("OSError: You are trying to access a gated repo.", "auth", "hf_gated"),
    ("KeyboardInterrupt", "killed", "interrupted"),
    ("torch.distributed.elastic.multiprocessing.api.SignalException: Process 4821 got signal: 15", "killed",
     "interrupted"),
]  # fmt: skip

# Lines that must never match (ordinary output, config echoes, warnings).
NEGATIVE = [
    "MAX_TRAIN_SAMPLES: 500",
    "config: batch_size=8 oom_retry=1 nccl_timeout=600 error_rate=0.1",
    "{'max_train_samples': '500', 'cuda': True}",
    "NCCL_DEBUG=INFO",
    "node0:1234:1234 [0] NCCL INFO Channel 00/02 :    0   1",
    "node0:1234:1234 [0] NCCL INFO NCCL_ASYNC_ERROR_HANDLING set by environment to 1.",
    "node0:1234:1300 [0] NCCL WARN Call to connect returned Connection refused, retrying",
    "node0:1234:1300 [1] NCCL WARN Cuda failure 'out of memory'",
    "node0:1234:1300 [0] NCCL INFO transport/net_ib.cc:1038 -> 2 (ncclSystemError, retrying)",
    "NCCL version 2.20.5+cuda12.4",
    "Loading checkpoint shards: 100%|██████████| 4/4 [00:05<00:00,  1.30s/it]",
    "eval iter 20 | train 3.1 | val 3.2",
    "iter 123 | loss 3.21 | lr 6e-4 | 12345 tok/s",
    "step 1000: train loss 2.8512, val loss 2.9001",
    "{'loss': 3.2145, 'grad_norm': 0.8812, 'learning_rate': 5e-05, 'epoch': 0.5}",
    "Epoch 3/10: 100%|██████████| 500/500 [02:01<00:00, 4.12it/s, loss=1.23]",
    " 45%|████▌     | 450/1000 [01:23<01:42,  5.37it/s, loss=3.21]\r 46%|████▌     | 460/1000 [01:25<01:40]",
    "wandb: Run data is saved locally in /workspace/wandb/run-20240101_120000-abc123",
    "wandb: WARNING Serializing object of type dict that is 1048576 bytes",
    "wandb: Currently logged in as: alice (team). Use `wandb login --relogin` to force relogin",
    "CUDA_VISIBLE_DEVICES=0,1",
    "torch.cuda.OutOfMemoryError handler installed",
    "KeyboardInterrupt handler installed",
    "allow_oom_fallback: true; catch CUDA out of memory errors in eval",
    "The word Traceback (most recent call last): appears inside this sentence",
    "printing a Traceback (most recent call last):",
    "no_space_left_on_device_retry=3",
    "ls: cannot open directory '/root/.ssh': Permission denied",
    "ls: cannot access 'data/*.bin': No such file or directory",
    "sh: 1: nvidia-smi: not found",
    "/usr/lib/python3/dist-packages/torch/cuda/__init__.py:118: UserWarning: CUDA initialization: CUDA "
    "driver version is insufficient for CUDA runtime version (Triggered internally at "
    "../c10/cuda/CUDAFunctions.cpp:108.)",
    "FutureWarning: `torch.cuda.amp.GradScaler(args...)` is deprecated. Please use "
    "`torch.amp.GradScaler('cuda', args...)` instead.",
    "UserWarning: FileNotFoundError: data/cache.npy missing, rebuilding the cache",
    "on_error: FileNotFoundError",
    "retry_exceptions: ['FileNotFoundError', 'ConnectionError']",
    "ignore_errors=FileNotFoundError,data",
    "[rank1]:[W1019 12:00:00.000 ProcessGroupNCCL.cpp:4115] Warning: TORCH_NCCL_AVOID_RECORD_STREAMS=1 has "
    "no effect for point-to-point collectives. (function operator())",
    "[rank0]:[W ProcessGroupNCCL.cpp:1168] Warning: WARNING: process group has NOT been destroyed before we "
    "destruct ProcessGroupNCCL. On normal program exit, the application should call destroy_process_group to "
    "ensure that any pending NCCL operations have finished in this process.",
    "[rank1]:[W1019 12:00:00.000 ProcessGroupNCCL.cpp:1250] [PG 0 Rank 1] NCCL error during shutdown ignored",
    "W1019 12:00:00.123000 1234 torch/distributed/elastic/agent/api.py:704] DistBackendError ignored",
    "[I1019 12:00:00.000 ProcessGroupNCCL.cpp:869] [PG 0 Rank 0] ProcessGroupNCCL initialization options: "
    "size: 2, global rank: 0, TIMEOUT(ms): 600000, TORCH_NCCL_DUMP_ON_TIMEOUT: 0, NCCL_DEBUG: INFO",
    "Using device: cuda (NVIDIA H100 80GB HBM3), ECC mode: enabled, Xid errors: 0",
    "saving checkpoint to out/ckpt.pt",
    "HTTP Request: GET https://huggingface.co/api/models/gpt2 \"HTTP/1.1 200 OK\"",
    "status_codes_to_retry: [401, 403, 500, 502]",
    "INFO: data error count: 0",
    "Checking Disk quota: ok, No space issues",
    "Downloading shards: 100%|██████████| 2/2 [00:30<00:00, 15.2s/it]",
    "tokens per iteration will be: 524,288",
    "dataset: data/openwebtext/train.bin (9.0 GB), val.bin (4.4 MB)",
    "ValueError: bad lr",  # an exception line without a traceback is not fatal on its own
    "FileNotFoundError: [Errno 2] No such file or directory: 'nvidia-smi'",
    "  File \"/workspace/train.py\", line 42, in <module>",
]  # fmt: skip


def feed_all(matcher: FatalMatcher, lines: list[str]) -> list[tuple[int, FatalMatch]]:
    """Feed lines, then flush; return (index of the line whose feed returned it, or -1 for flush)."""
    found = []
    for i, line in enumerate(lines):
        m = matcher.feed(line)
        if m is not None:
            found.append((i, m))
    while True:
        m = matcher.flush()
        if m is None:
            return found
        found.append((-1, m))


def test_failure_classes_are_exact() -> None:
    assert FAILURE_CLASSES == ("oom", "cuda", "nccl", "disk_full", "data_missing", "auth",
                               "python_exception", "timeout", "stalled", "killed", "lost", "nonzero_exit")


def test_default_pattern_table_is_well_formed() -> None:
    names = [p.name for p in DEFAULT_PATTERNS]
    assert len(names) == len(set(names))
    for p in DEFAULT_PATTERNS:
        assert p.failure_class in FAILURE_CLASSES
        assert p.description and "\n" not in p.description
    assert set(names) == {name for _, _, name in POSITIVE}, "every default pattern has a positive example"


@pytest.mark.parametrize(("line", "failure_class", "name"), POSITIVE)
def test_positive_line_matches_at_once(line: str, failure_class: str, name: str) -> None:
    matcher = FatalMatcher()
    m = matcher.feed(line)
    assert m is not None, line
    assert (m.failure_class, m.pattern, m.lines, m.line_number) == (failure_class, name, (line,), 1)
    assert m.description
    assert matcher.flush() is None and not matcher.pending


def test_positive_corpus_is_large_enough() -> None:
    assert len(POSITIVE) >= 25 and len(NEGATIVE) >= 40


@pytest.mark.parametrize("line", NEGATIVE)
def test_negative_line_never_matches(line: str) -> None:
    matcher = FatalMatcher()
    assert matcher.feed(line) is None
    assert matcher.feed(f"[rank0]: {line}") is None
    assert matcher.flush() is None


@pytest.mark.parametrize("prefix", ["[rank0]: ", "[rank12]:", "[default3]:", "[rank1]:[rank1]:"])
def test_rank_prefixes_are_stripped_for_anchored_patterns(prefix: str) -> None:
    m = FatalMatcher().feed(prefix + "FileNotFoundError: [Errno 2] No such file or directory: 'data/x.bin'")
    assert m is not None and m.failure_class == "data_missing"
    assert FatalMatcher().feed(prefix + "KeyboardInterrupt") is not None


SIMPLE = [
    "Traceback (most recent call last):",
    '  File "/workspace/train.py", line 42, in <module>',
    "    main()",
    '  File "/workspace/train.py", line 30, in main',
    '    raise ValueError("bad lr")',
    "ValueError: bad lr",
]


def test_simple_traceback_fires_python_exception_on_flush() -> None:
    matcher = FatalMatcher()
    assert [matcher.feed(line) for line in SIMPLE] == [None] * len(SIMPLE)
    assert matcher.pending
    m = matcher.flush()
    assert m == FatalMatch("python_exception", "python_traceback",
                           "unhandled Python exception (a complete traceback)",
                           (SIMPLE[0], SIMPLE[3], SIMPLE[5]), 6)  # fmt: skip
    assert matcher.flush() is None and not matcher.pending


def test_held_traceback_is_released_after_the_window() -> None:
    matcher = FatalMatcher()
    lines = SIMPLE + [f"iter {i} | loss 3.2" for i in range(40)]
    found = feed_all(matcher, lines)
    assert len(found) == 1
    index, m = found[0]
    assert m.failure_class == "python_exception" and m.line_number == 6
    assert index == 5 + 31  # released by the 31st line after the exception line


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_held_traceback_is_released_on_a_timer_whatever_else_is_printed() -> None:
    clock = FakeClock()
    matcher = FatalMatcher(hold_secs=0.5, clock=clock)
    assert [matcher.feed(line) for line in SIMPLE] == [None] * len(SIMPLE)
    assert matcher.release_due() is None and matcher.pending  # not yet: a chain may follow
    clock.now += 0.2
    assert matcher.feed("iter 1 | loss 3.2") is None
    clock.now += 0.3
    m = matcher.feed("iter 2 | loss 3.2")  # 2 lines after, but 0.5 s after the exception line
    assert m is not None and m.failure_class == "python_exception" and m.line_number == 6
    assert m.first_line == 1 and not matcher.pending


def test_release_due_without_further_lines() -> None:
    clock = FakeClock()
    matcher = FatalMatcher(hold_secs=0.5, clock=clock)
    for line in SIMPLE:
        matcher.feed(line)
    clock.now += 0.49
    assert matcher.release_due() is None
    clock.now += 0.02
    m = matcher.release_due()
    assert m is not None and m.lines[-1] == "ValueError: bad lr"
    assert matcher.release_due() is None


def test_timer_restarts_at_a_chain_header_and_keeps_frames_of_the_chain() -> None:
    clock = FakeClock()
    matcher = FatalMatcher(hold_secs=0.5, clock=clock)
    for line in CHAINED[:6]:  # up to "During handling of the above exception..."
        clock.now += 0.1
        assert matcher.feed(line) is None
    clock.now += 0.4  # 0.6 s after the first exception line, 0.4 s after the chain header
    assert matcher.release_due() is None
    for line in CHAINED[6:10]:
        assert matcher.feed(line) is None
    clock.now += 5.0  # the chain's frames: never released while a traceback is being read
    assert matcher.release_due() is None
    assert matcher.feed(CHAINED[10]) is None
    clock.now += 0.5
    m = matcher.release_due()
    assert m is not None and m.failure_class == "data_missing" and m.line_number == 11
    assert m.first_line == 1  # the chain's first header


def test_single_line_match_numbers() -> None:
    matcher = FatalMatcher()
    matcher.feed("step 1")
    m = matcher.feed("RuntimeError: CUDA error: an illegal memory access was encountered")
    assert m is not None and (m.line_number, m.first_line) == (2, 2) and matcher.lines_fed == 2


def test_incomplete_traceback_never_fires() -> None:
    assert feed_all(FatalMatcher(), SIMPLE[:5]) == []


def test_python_exception_can_be_disabled_but_specific_tracebacks_still_fire() -> None:
    assert feed_all(FatalMatcher(python_exception=False), SIMPLE) == []
    oom = SIMPLE[:5] + ["torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB."]
    found = feed_all(FatalMatcher(python_exception=False), oom)
    assert [m.failure_class for _, m in found] == ["oom"]


CHAINED = [
    "Traceback (most recent call last):",
    '  File "/workspace/data.py", line 3, in load',
    "    return np.memmap(path)",
    "FileNotFoundError: [Errno 2] No such file or directory: 'data/train.npy'",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/workspace/train.py", line 9, in <module>',
    "    load()",
    "RuntimeError: could not load the training data",
]


def test_chained_traceback_gives_one_match_at_the_final_exception_line() -> None:
    found = feed_all(FatalMatcher(), CHAINED)
    assert len(found) == 1
    _, m = found[0]
    assert m.failure_class == "data_missing" and m.pattern == "data_file_not_found"
    assert m.line_number == 11
    assert m.lines == (CHAINED[7], CHAINED[8], CHAINED[10], CHAINED[3])


def test_chained_generic_traceback_is_python_exception() -> None:
    lines = [line.replace("FileNotFoundError: [Errno 2] No such file or directory: 'data/train.npy'",
                          "KeyError: 'input_ids'") for line in CHAINED]  # fmt: skip
    found = feed_all(FatalMatcher(), lines)
    assert [(m.failure_class, m.line_number, m.lines[-1]) for _, m in found] == [
        ("python_exception", 11, "RuntimeError: could not load the training data")
    ]


def test_hugging_face_gated_chain_with_multiline_messages_is_one_auth_match() -> None:
    url = "https://huggingface.co/meta-llama/Llama-2-7b-hf/resolve/main/config.json"
    lines = [
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/huggingface_hub/utils/_http.py", line 406, in hf_raise',
        "    response.raise_for_status()",
        f"requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: {url}",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/transformers/utils/hub.py", line 399, in cached_file',
        "    resolved_file = hf_hub_download(",
        "huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-65a1)",
        "",
        f"Cannot access gated repo for url {url}.",
        "Access to model meta-llama/Llama-2-7b-hf is restricted. You must be authenticated to access it.",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "/workspace/train.py", line 12, in <module>',
        "    model = AutoModelForCausalLM.from_pretrained(name)",
        "OSError: You are trying to access a gated repo.",
        "Make sure to have access to it at https://huggingface.co/meta-llama/Llama-2-7b-hf.",
    ]
    found = feed_all(FatalMatcher(), lines)
    assert len(found) == 1
    m = found[0][1]
    assert (m.failure_class, m.pattern, m.line_number) == ("auth", "http_unauthorized", 21)
    assert m.lines[-2:] == (lines[20], lines[3])


def test_oom_traceback_with_rank_prefixes() -> None:
    lines = [
        "[rank0]: Traceback (most recent call last):",
        '[rank0]:   File "/workspace/train.py", line 310, in <module>',
        "[rank0]:     loss.backward()",
        '[rank0]:   File "/usr/lib/python3.11/site-packages/torch/_tensor.py", line 521, in backward',
        "[rank0]:     torch.autograd.backward(",
        "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total "
        "capacity of 79.10 GiB of which 1.12 GiB is free.",
    ]
    matcher = FatalMatcher()
    assert [matcher.feed(line) for line in lines] == [None] * 6
    m = matcher.flush()
    assert m is not None
    assert (m.failure_class, m.pattern, m.line_number) == ("oom", "cuda_oom", 6)
    assert m.lines == (lines[0], lines[3], lines[5])


def test_frame_source_lines_are_never_matched() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/workspace/train.py", line 50, in step',
        "    except torch.OutOfMemoryError: CUDA out of memory. handled",
        '  File "/workspace/train.py", line 51, in step',
        '    raise FileNotFoundError: "data/train.bin"',
        "ValueError: bad batch",
    ]
    found = feed_all(FatalMatcher(), lines)
    assert [m.failure_class for _, m in found] == ["python_exception"]


def test_traceback_interleaved_with_other_ranks() -> None:
    lines = [
        "[rank0]: Traceback (most recent call last):",
        "[rank1]: iter 100 | loss 3.2",
        '[rank0]:   File "/workspace/train.py", line 5, in <module>',
        "[rank1]: wandb: Run data is saved locally",
        '[rank0]:     x = batch["input_ids"]',
        "[rank1]: Epoch 1: 50%|#####     | 50/100",
        "[rank0]: KeyError: 'input_ids'",
        "[rank1]: iter 102 | loss 3.0",
    ]
    found = feed_all(FatalMatcher(), lines)
    assert len(found) == 1
    m = found[0][1]
    assert m.failure_class == "python_exception" and m.line_number == 7
    assert m.lines == (lines[0], lines[2], lines[6])


def test_other_rank_fatal_line_fires_at_once_during_a_traceback() -> None:
    matcher = FatalMatcher()
    assert matcher.feed("[rank0]: Traceback (most recent call last):") is None
    m = matcher.feed("[rank1]: torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970")
    assert m is not None and m.failure_class == "nccl" and m.line_number == 2
    assert matcher.feed('[rank0]:   File "train.py", line 5, in <module>') is None
    assert matcher.feed("[rank0]: RuntimeError: boom") is None
    m = matcher.flush()
    assert m is not None and m.failure_class == "python_exception"


def test_unprefixed_interleaved_fatal_line_inside_frames_still_fires() -> None:
    matcher = FatalMatcher()
    matcher.feed("Traceback (most recent call last):")
    matcher.feed('  File "train.py", line 5, in <module>')
    m = matcher.feed("[E ProcessGroupNCCL.cpp:474] [Rank 1] Some NCCL operations have failed or timed out.")
    assert m is not None and m.failure_class == "nccl"
    assert matcher.feed("ValueError: x") is None
    m = matcher.flush()
    assert m is not None and m.failure_class == "python_exception"


def test_traceback_header_glued_to_a_tqdm_bar() -> None:
    lines = [" 45%|####5     | 450/1000 [01:23<01:42,  5.37it/s]Traceback (most recent call last):"]
    lines += SIMPLE[1:]
    found = feed_all(FatalMatcher(), lines)
    assert [(m.failure_class, m.lines[0]) for _, m in found] == [("python_exception", lines[0])]


def test_two_unchained_tracebacks_give_two_matches() -> None:
    lines = SIMPLE + ["Traceback (most recent call last):", '  File "x.py", line 1, in <f>', "KeyError: 'a'"]
    found = feed_all(FatalMatcher(), lines)
    assert [(i, m.line_number) for i, m in found] == [(6, 6), (-1, 9)]


def test_keyboard_interrupt_traceback_is_killed() -> None:
    lines = SIMPLE[:5] + ["KeyboardInterrupt"]
    assert [m.failure_class for _, m in feed_all(FatalMatcher(), lines)] == ["killed"]


def test_torchrun_child_failed_error_traceback_does_not_fire() -> None:
    lines = [
        "Traceback (most recent call last):",
        '  File "/usr/local/bin/torchrun", line 8, in <module>',
        "    sys.exit(main())",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "train.py FAILED",
        "  exitcode  : -9 (pid: 1234)",
        "  traceback : Signal 9 (SIGKILL) received by PID 1234",
    ]
    assert feed_all(FatalMatcher(), lines) == []


def test_message_line_after_exception_sets_the_class() -> None:
    lines = SIMPLE[:5] + ["RuntimeError: NCCL communicator failed", "ncclUnhandledCudaError: cuda failed"]
    found = feed_all(FatalMatcher(), lines)
    assert [(m.failure_class, m.lines[-1]) for _, m in found] == [("nccl", lines[6])]


def test_user_patterns_parse_and_match() -> None:
    text = "# my patterns\n\n  oom   MyAllocator: out of arena  \ndata_missing ^missing shard \\d+\n"
    patterns = parse_user_patterns(text, "fatal.txt")
    assert [(p.name, p.failure_class, p.regex.pattern) for p in patterns] == [
        ("user:fatal.txt:3", "oom", "MyAllocator: out of arena"),
        ("user:fatal.txt:4", "data_missing", r"^missing shard \d+"),
    ]
    matcher = FatalMatcher(patterns)
    assert matcher.feed("iter 1 | loss 3.2") is None
    m = matcher.feed("[rank0]: missing shard 12 in /data")
    assert m is not None and (m.failure_class, m.pattern) == ("data_missing", "user:fatal.txt:4")
    m = matcher.feed("MyAllocator: out of arena")
    assert m is not None and m.failure_class == "oom" and "fatal.txt line 3" in m.description


def test_user_patterns_come_before_defaults_and_classify_tracebacks() -> None:
    text = "data_missing CUDA error: an illegal memory access\nauth ^mylib\\.TokenError"
    patterns = parse_user_patterns(text, "p")
    matcher = FatalMatcher(patterns)
    m = matcher.feed("RuntimeError: CUDA error: an illegal memory access was encountered")
    assert m is not None and m.failure_class == "data_missing"
    lines = SIMPLE[:5] + ["mylib.TokenError: token expired"]
    assert [m.failure_class for _, m in feed_all(FatalMatcher(patterns), lines)] == ["auth"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oom CUDA\nooom out of memory\n", "fatal.txt line 2: unknown failure class 'ooom'; write CLASS"),
        ("# c\ncuda foo(\n", "fatal.txt line 2: invalid regex 'foo(': missing ), unterminated subpattern"),
        ("\n\ncuda\n", "fatal.txt line 3: no regex after 'cuda'; write CLASS REGEX"),
        ("oom .*\n", "fatal.txt line 1: regex '.*' matches an empty line"),
    ],
)
def test_user_pattern_errors(text: str, expected: str) -> None:
    with pytest.raises(WorkflowError) as info:
        parse_user_patterns(text, "fatal.txt")
    message = str(info.value)
    assert message.startswith(expected)
    assert message.endswith("; write CLASS REGEX with CLASS one of " + ", ".join(FAILURE_CLASSES))
    assert "\n" not in message
    assert info.value.code == ExitCode.USAGE


def test_user_pattern_empty_file() -> None:
    assert parse_user_patterns("", "x") == []
    assert parse_user_patterns("# only a comment\n   \n", "x") == []


@pytest.mark.parametrize(
    ("exit_code", "signal_number", "oom_killed", "stopped_by", "expected"),
    [
        (None, signal.SIGTERM, False, "timeout", "timeout"),
        (143, None, False, "stall", "stalled"),
        (None, signal.SIGINT, False, "cancel", "killed"),
        (0, None, True, "timeout", "timeout"),
        (None, signal.SIGKILL, True, None, "oom"),
        (137, None, True, None, "oom"),
        (-9, None, True, None, "oom"),
        (1, None, True, None, "oom"),
        (None, signal.SIGKILL, False, None, "killed"),
        (137, None, False, None, "killed"),
        (-9, None, False, None, "killed"),
        (None, signal.SIGTERM, False, None, "killed"),
        (143, None, False, None, "killed"),
        (None, signal.SIGINT, False, None, "killed"),
        (130, None, False, None, "killed"),
        (None, signal.SIGHUP, False, None, "killed"),
        (None, signal.SIGTERM, True, None, "killed"),
        (None, signal.SIGSEGV, False, None, "nonzero_exit"),
        (139, None, False, None, "nonzero_exit"),
        (None, signal.SIGBUS, False, None, "nonzero_exit"),
        (-6, None, False, None, "nonzero_exit"),
        (None, signal.SIGABRT, True, None, "nonzero_exit"),
        (1, None, False, None, "nonzero_exit"),
        (2, None, False, None, "nonzero_exit"),
        (255, None, False, None, "nonzero_exit"),
        (None, None, False, None, "lost"),
    ],
)
def test_classify_exit_table(
    exit_code: int | None, signal_number: int | None, oom_killed: bool, stopped_by: str | None, expected: str
) -> None:
    assert classify_exit(exit_code, signal_number, oom_killed, stopped_by) == expected
    assert expected in FAILURE_CLASSES


def test_classify_exit_rejects_success_and_unknown_stop() -> None:
    with pytest.raises(ValueError):
        classify_exit(0, None, False, None)
    with pytest.raises(ValueError):
        classify_exit(0, None, True, None)
    with pytest.raises(ValueError):
        classify_exit(1, None, False, "reboot")


def test_oom_kill_count_is_best_effort() -> None:
    value = oom_kill_count()
    assert value is None or (isinstance(value, int) and value >= 0)


def test_read_counter_parses_memory_events(tmp_path: Path) -> None:
    path = tmp_path / "memory.events"
    path.write_text("low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n")
    assert exitcause._read_counter(str(path), "oom_kill") == 2
    assert exitcause._read_counter(str(path), "nope") is None
    assert exitcause._read_counter(str(path) + ".missing", "oom_kill") is None


def test_kernel_oom_killed(monkeypatch: pytest.MonkeyPatch) -> None:
    result = kernel_oom_killed(1)
    assert result is None or isinstance(result, bool)
    log = (
        "6,1,2,-;python invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0\n"
        "6,3,4,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),task=python,pid=4242,uid=0\n"
        "3,5,6,-;Memory cgroup out of memory: Killed process 4242 (python) total-vm:123kB\n"
    )
    monkeypatch.setattr(exitcause, "_kernel_log", lambda: log)
    assert kernel_oom_killed(4242) is True
    assert kernel_oom_killed(424) is False
    monkeypatch.setattr(exitcause, "_kernel_log", lambda: None)
    assert kernel_oom_killed(4242) is None

    def boom() -> str:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(exitcause, "_kernel_log", boom)
    assert kernel_oom_killed(4242) is None


def test_speed_of_ordinary_lines() -> None:
    lines = [f"iter {i} | loss 3.21 | lr 6e-4 | 12345 tok/s" for i in range(1_000_000)]
    matcher = FatalMatcher()
    feed = matcher.feed
    start = time.perf_counter()
    hits = sum(1 for line in lines if feed(line) is not None)
    elapsed = time.perf_counter() - start
    assert hits == 0
    assert elapsed < 5.0, f"1,000,000 ordinary lines took {elapsed:.2f} s"


@pytest.mark.parametrize(("exit_code", "signal_number", "expected"), [
    (137, None, signal.SIGKILL), (-9, None, signal.SIGKILL), (None, 15, 15), (1, None, None),
    (0, None, None), (193, None, None), (None, None, None), (143, None, signal.SIGTERM),
])
def test_exit_signal(exit_code: int | None, signal_number: int | None, expected: int | None) -> None:
    assert exit_signal(exit_code, signal_number) == expected


def test_kernel_oom_killed_pids(monkeypatch: pytest.MonkeyPatch) -> None:
    log = ("6,3,4,-;oom-kill:constraint=CONSTRAINT_MEMCG,task=python,pid=4242,uid=0\n"
           "3,5,6,-;Memory cgroup out of memory: Killed process 4242 (python) total-vm:123kB\n"
           "3,7,8,-;Out of memory: Killed process 777 (other) total-vm:1kB\n")
    monkeypatch.setattr(exitcause, "_kernel_log", lambda: log)
    assert kernel_oom_killed_pids() == {4242, 777}
    monkeypatch.setattr(exitcause, "_kernel_log", lambda: None)
    assert kernel_oom_killed_pids() is None


def _never() -> set[int] | None:
    raise AssertionError("the kernel log must not be read without other evidence")


@pytest.mark.parametrize(("exit_code", "sig", "before", "after", "worker_sigkill", "killed", "expected"), [
    # the kernel log names one of the task's processes: oom, whatever the wrapper's exit code
    (1, None, None, None, True, {11, 99}, True),
    (137, None, 3, 4, False, {12}, True),
    (137, None, None, None, False, {12}, True),
    # a shared cgroup's counter rose: only with a SIGKILL of this task
    (137, None, 3, 4, False, None, True),
    (None, signal.SIGKILL, 3, 4, False, set(), True),
    (1, None, 3, 4, True, None, True),  # torchrun: a worker died with -9
    (1, None, 3, 4, False, None, False),  # another process of the cgroup was OOM-killed
    (1, None, 3, 4, False, {555}, False),
    (137, None, 4, 4, False, None, False),  # a plain kill -9
    (137, None, None, None, False, None, False),
    (137, None, None, None, False, {555}, False),  # someone else's pid in the kernel log
])
def test_oom_verdict(exit_code: int | None, sig: int | None, before: int | None, after: int | None,
                     worker_sigkill: bool, killed: set[int] | None, expected: bool) -> None:
    assert oom_verdict(exit_code, sig, before, after, {11, 12}, worker_sigkill, lambda: killed) is expected


def test_oom_verdict_reads_no_kernel_log_without_evidence() -> None:
    assert oom_verdict(1, None, 3, 3, {11}, False, _never) is False
    assert oom_verdict(2, None, None, None, {11}, False, _never) is False


@pytest.mark.parametrize("line", [
    "  exitcode  : -9 (pid: 4321)",
    "torch.distributed.elastic.multiprocessing.api: [WARNING] Signal 9 (SIGKILL) received by PID 4321",
])
def test_worker_sigkill_lines(line: str) -> None:
    assert exitcause.WORKER_SIGKILL_RE.search(line)


@pytest.mark.parametrize("line", ["exitcode  : 1 (pid: 4321)", "lr=-9e-4", "exitcode: -90"])
def test_not_worker_sigkill_lines(line: str) -> None:
    assert not exitcause.WORKER_SIGKILL_RE.search(line)
