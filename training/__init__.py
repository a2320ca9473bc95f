"""The training role (installed as ``recsvc.training``): events in, versioned model
artifacts out. Its commands are ``recsvc synth|train|evaluate|tune|publish``
(:mod:`.commands`).
"""
