"""Kernel sources that are not compiled C++: the Triton kernels (babygpt_ext.kernels.triton).

Nothing here is imported by `import babygpt_ext`: the backend registry imports
babygpt_ext.kernels.triton lazily, on the first call that asks for backend "triton".
"""
