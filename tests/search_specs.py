"""The small searchable spec that the search tests share (imported by name: tests/ is on sys.path)."""

SPEC = """\
nnspec: 1
name: tiny
input: [8]
model:
  - {linear: 16, name: hidden}
  - relu
  - linear: 4
loss: cross_entropy
optimizer: {adam: {lr: 0.01, betas: [0.9, 0.999]}}
data: {dataset: synthetic, val: 64, synthetic: {samples: 512, test_samples: 128, classes: 4}}
train: {epochs: 2, batch_size: 32, device: cpu}
search:
  trials: 6
  space:
    optimizer.lr: {log_uniform: [1.0e-3, 1.0e-1]}
    model.hidden.out: {int: [4, 32]}
    optimizer.betas.0: {one_minus_log_uniform: [0.8, 0.99]}
"""
