"""Install the toolkit: `pip install -e .[test]` brings everything the project and its tests use.

Ranges here (upper bounds on majors not yet tested); the exact versions the suite passed with are in
requirements-lock.txt, which tools/setup_env.sh installs."""
from setuptools import find_packages, setup

setup(
    name="cnn-toolkit",
    version="0.1.0",
    description="Train the classic ImageNet CNNs with PyTorch, MXNet-compatible data and logs",
    python_requires=">=3.10",
    packages=find_packages(include=["toolkit", "toolkit.*", "recipes", "recipes.*"]),
    install_requires=[
        "torch>=2.4,<3",
        "torchvision>=0.19,<1",
        "nvidia-dali-cuda130>=2.0,<3; platform_system == 'Linux' and platform_machine == 'x86_64'",
        # region decode of training crops on the CPU (also a dependency of DALI itself)
        "nvidia-nvimgcodec-cu13>=0.5,<1; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "numpy<3",
        # the loader's crop resize (toolkit/data/torch_backend.py: 2x torch's on a 224 crop)
        "opencv-python-headless>=4.8,<6",
        "pillow<14",
        "click>=8.0,<9",
        "pandas<4",
        "matplotlib<4",
        "tqdm<5",
    ],
    extras_require={"test": ["pytest>=7,<10", "pytest-timeout<3"]},
)
