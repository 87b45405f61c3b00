"""The composition root: the ``hybridserve`` command line, which wires models, serving, loadtests
and tuning together. Nothing imports this package back."""
