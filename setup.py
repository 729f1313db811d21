"""Install the toolkit: `pip install -e .[test]` brings everything the project and its tests use."""
from setuptools import find_packages, setup

setup(
    name="cnn-toolkit",
    version="0.1.0",
    description="Train the classic ImageNet CNNs with PyTorch, MXNet-compatible data and logs",
    python_requires=">=3.10",
    packages=find_packages(include=["toolkit", "toolkit.*", "recipes", "recipes.*"]),
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "nvidia-dali-cuda130>=2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        # region decode of training crops on the CPU (also a dependency of DALI itself)
        "nvidia-nvimgcodec-cu13>=0.5; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "numpy",
        # the loader's crop resize (toolkit/data/torch_backend.py: 2x torch's on a 224 crop)
        "opencv-python-headless>=4.8",
        "pillow",
        "click>=8.0",
        "pandas",
        "matplotlib",
        "tqdm",
        # tools/train_linear.py: logistic regression on extracted features (toolkit/transfer/linear.py)
        "scikit-learn>=1.3,<2",
    ],
    extras_require={"test": ["pytest>=7", "pytest-timeout"]},
)
