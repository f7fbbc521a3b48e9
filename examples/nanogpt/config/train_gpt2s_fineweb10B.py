# GPT-2 small (124M) on FineWeb10B (GPT-2 tokens), bf16 + torch.compile, one GPU (80 GB class).
# Data: python data/fineweb10B/download.py --out data/fineweb10B --train-shards 27
#   (or set DOWNLOAD_FINEWEB=1 and FINEWEB_TRAIN_SHARDS=27; with fewer shards the data repeats)
# Run:  python train.py config/train_gpt2s_fineweb10B.py
# 524,288 tokens per step (32 x 1024 x 16); 5000 steps = 2.6B tokens.
out_dir = "out/gpt2s"
vocab_size = 50304
block_size = 1024
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False
batch_size = 32
gradient_accumulation_steps = 16
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 250
lr_decay_iters = 5000
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
eval_interval = 250
eval_iters = 10  # optimizer steps' worth of val tokens: 10 x 524,288
log_interval = 10
checkpoint_interval = 500
device = "auto"
dtype = "bfloat16"
compile = True
