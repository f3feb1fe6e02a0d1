"""Wav2Lip 256: the network, its checkpoint loader, its mel features and avatar creation.

    wav2lip.model       Wav2Lip256 (state-dict compatible with the public wav2lip256.pth)
    wav2lip.checkpoint  load_model, prepare, fuse_batchnorm, save_checkpoint, CheckpointMismatch
    wav2lip.onednn      CPU fast path: conv + add + ReLU as one oneDNN call per block
    wav2lip.infer       predict: numpy mel windows and face crops in, mouths out
    wav2lip.random_init random but well-scaled weights for tests and benchmarks
    wav2lip.audio       melspectrogram, mel_chunks
    wav2lip.genavatar   python -m wav2lip.genavatar (avatar folders in upstream's format)

Submodules are not imported here: making an avatar should not pay for importing torch.
"""
