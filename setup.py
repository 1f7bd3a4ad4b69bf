"""ocjax: unsupervised object-centric models in JAX/Flax."""
import setuptools

setuptools.setup(
    name="ocjax",
    version="0.1.0",
    description=(
        "Object-centric generative models (GENESIS-V2, APEX, AST-Seg, "
        "PROVIDE) in JAX/Flax"),
    packages=setuptools.find_packages(
        include=["ocjax", "ocjax.*", "data_pipelines", "data_pipelines.*",
                 "experiments"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.5",
        "chex>=0.1.90",
        "orbax-checkpoint>=0.12,<0.13",
        "tensorflow-cpu>=2.20",
        "tensorflow-datasets>=4.9",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "tensorboard>=2.20",
        "numpy>=2.0",
        "scipy>=1.13",
        "pillow>=10.0",
        "h5py>=3.10",
        "motmetrics>=1.4",
    ],
    extras_require={
        "test": ["pytest>=8", "scikit-learn>=1.5"],
        "sim": ["pybullet>=3.2.6"],
        "torch": ["torch"],
    },
)
