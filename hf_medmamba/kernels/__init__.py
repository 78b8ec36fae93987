"""The compiled CPU selective-scan kernel (C++ source and its ctypes loader). Not part of the remote-code files: the
scan dispatch imports it inside ``try`` and runs the pure-PyTorch scan without it."""
