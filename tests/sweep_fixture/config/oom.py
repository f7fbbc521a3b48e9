mode = "oom"
steps = 4
batch_size = 16
oom_above = 8
