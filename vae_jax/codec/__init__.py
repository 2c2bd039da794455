"""Compression with the trained model: lossless bits-back coding (BB-ANS) and a lossy mode.

`tables` turns the model into the coder's integer probabilities, `bitsback` and `lossy` are the two
codecs, `container` the file format, `images` reading and writing images, `baselines` the classic
codecs they are measured against.
"""
