"""The network: its config, the blocks of the reference, the U-Net assembly, the fast layer norm
and Winograd kernels (compiled in :mod:`unet.model.native`), reduced precision and export."""
