"""Several devices and machines on MXNet's parameter server: kvstore helpers for the training
loop (:mod:`~unet.cluster.distributed`), the launcher (``python -m unet.launch``) and its node
lists (local processes, ssh hosts). The launcher and the node lists never import MXNet."""
