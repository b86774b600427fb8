"""`babygpt gpu-report`: what the compilers made of every GPU kernel, read without a GPU.

    cubin.py       cuobjdump: where it is, resources (registers, shared memory, spills) and SASS counts
    triton_aot.py  compiles the Triton kernels for sm_80/sm_90 on the host and reads their cubins
    cuda.py        reads the CUDA C++ kernels' cubins out of the built extension babygpt_ext._C
    roofline.py    FLOPs and bytes per kernel launch, and the time a reference GPU needs for them
    report.py      one Row per kernel x arch x dtype x shape, the table and the JSON

Imports point down that list: report uses the three readers and the roofline, which use nothing
of each other but cubin.py.
"""
