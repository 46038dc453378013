"""Static performance report of attnc's kernels, without a GPU (`Attention.inspect`, `attnc inspect`,
benchmarks/bench_static.py).

    launches.py    the kernels a call launches, recorded with the arguments it passes, as compile jobs
    sass.py        SASS: instructions, natural loops, categories, tensor-core work, pipelining
    report.py      per kernel and loop: the figures per score element, and ratios to the yardstick
    inspection.py  one variant's report, as a record and as text
    yardstick.py   the reference: a plain dense FlashAttention-2 forward and backward in Triton
"""
