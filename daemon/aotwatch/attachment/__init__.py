"""Capture in a training process: ``process.attach`` picks where records go (local mode or
this node's collector), ``first_compile`` waits for the first compile, ``bootstrap`` and
``trace`` attach to every Python process a launcher starts."""
