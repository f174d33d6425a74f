"""The image lane: deploy/Dockerfile's filesystem built and run without a container engine.

``python -m tools.image build`` makes a debootstrap root of the Debian release the Dockerfile's base
names (tools/image/base.py, cached), executes the Dockerfile's instructions on it (build.py) and writes
the final stage's filesystem and config; ``python -m tools.image run`` runs that image with chroot in its
own mount and PID namespaces (chroot.py, enter.py), as its user, with its entry point. ``make test-image``
runs tests/image against it.
"""
