"""The PEFT method: `MPNConfig`, the patch layers, `MPNModel`, its registration with peft, model card and hub push.

It knows nothing about editing: it adds, freezes, saves, loads and merges patch neurons.
"""
