# A tiny byte-level GPT that learns Python source in ~10 s on 2 CPU cores (val loss 5.4 -> 2.7).
# Data: python data/build_offline_shards.py   (byte-level shards, vocab 256, into data/offline)
import os

out_dir = "out/tiny"
data_dir = os.environ.get("DATA_DIR") or "data/offline"  # DATA_DIR (e.g. set by workflow.sh) wins
vocab_size = 256
block_size = 64
n_layer = 2
n_head = 4
n_embd = 128
dropout = 0.0
bias = False
batch_size = 16
gradient_accumulation_steps = 1
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 10
lr_decay_iters = 150
max_iters = 150
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 25
eval_iters = 4
log_interval = 10
checkpoint_interval = 50
device = "auto"
dtype = "auto"
compile = False
