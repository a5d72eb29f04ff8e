"""Coverage-guided fuzzing of every parser of untrusted input (``python -m fuzz``).

``targets`` holds one function per parser (a batch an agent sent, a stored chain, the
policy files, USBGuard rules, meeting rooms, file labels, the console's query strings,
USB descriptors) and the exceptions that are each parser's own answer to bad input;
``seeds`` the inputs each run starts from; ``worker`` runs one target under atheris;
``__main__`` runs them all and reports inputs, crashes and hangs.
"""
