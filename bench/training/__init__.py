"""Benchmarks of training: ``train.py`` (the L-GM head against softmax: accuracy and time; a CIFAR ResNet
timing with ``--cifar-synthetic``), ``stability.py`` (numerical safety: the least forgiving L-GM setting
trained for 30 epochs) and ``robust_train.py`` (robust accuracy of adversarially trained models under
white-box PGD)."""
