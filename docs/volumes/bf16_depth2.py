"""Reproduces a torch CPU fault that 3-D training under bf16 autocast can meet.

On torch 2.14.1 (CPU), the weight gradient of a 3x3x3 ``Conv3d`` under bf16 autocast comes out
non-finite now and then when the input is 2 deep, apparently from memory the kernel reads before
writing: the script fills freed memory with NaN first, then counts the trials whose gradient is
not finite, for several input shapes. A DenseNet meets this shape where a dense block sees
volumes 2 deep (e.g. 8-deep inputs with the CIFAR stem at the third block); the run then stops
with "the loss became nan". Depths of 1 or 3 and more, fp32, and 2-D convolutions were clean.

    python docs/volumes/bf16_depth2.py
"""

import torch


def non_finite_trials(shape: tuple[int, int, int], *, bf16: bool = True, trials: int = 30) -> int:
    bad = 0
    for _ in range(trials):
        junk = [torch.full((n,), float("nan")) for n in (256, 4096, 65536)]
        del junk
        conv = torch.nn.Conv3d(16, 4, 3, padding=1, bias=False)
        x = torch.randn(2, 16, *shape)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = conv(x)
        y.float().sum().backward()
        bad += not bool(torch.isfinite(conv.weight.grad).all())
    return bad


if __name__ == "__main__":
    print(f"torch {torch.__version__}")
    for shape, bf16 in [((2, 2, 2), True), ((2, 8, 8), True), ((3, 3, 3), True), ((4, 2, 4), True), ((2, 2, 2), False)]:
        print(
            f"input depth x height x width {shape}, {'bf16' if bf16 else 'fp32'}: "
            f"{non_finite_trials(shape, bf16=bf16)} of 30 weight gradients not finite"
        )
