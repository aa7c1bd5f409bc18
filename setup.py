# The only reason for this file: the native atomics/writer extension.
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "shmdiag.core._native",
            sources=["shmdiag/core/_native.c"],
            libraries=["m"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
