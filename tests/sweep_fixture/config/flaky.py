mode = "flaky_nccl"
steps = 3
