"""Training L-GM networks: the L-GM head and loss, backbones, datasets, trainer and model artifacts.

This package depends on nothing else in the project (imports go service -> detector -> training).
"""
