"""A real Triton Inference Server on this machine, without Docker or a GPU: the server process
(``server.TritonServer``), the ``serve``/``status``/``load``/``unload`` commands, the python-based
backends that make NVIDIA's repository format load on CPU, and the set-up script that installs them.
"""
