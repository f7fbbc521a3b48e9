max_iters = 10  # fixture config for sweep CSV tests
