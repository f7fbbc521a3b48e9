mode = "ok"
steps = 3
batch_size = 8
