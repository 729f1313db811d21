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
        # tools/sweep.py: SLURM job arrays with requeue on preemption, and YAML variant files
        "submitit>=1.5,<2",
        "pyyaml>=6,<7",
        # tools/visualize.py: Grad-CAM and occlusion (toolkit/visualize/heatmaps.py)
        "captum>=0.7,<1",
        # tools/train_linear.py: logistic regression on extracted features (toolkit/transfer/linear.py)
        "scikit-learn>=1.3,<2",
    ],
    extras_require={
        # tools/export.py --format onnx: the dynamo-based exporter (onnxscript) and the parity check
        "export": ["onnx>=1.16,<2", "onnxscript>=0.2,<1", "onnxruntime>=1.18,<2"],
        "test": ["pytest>=7,<10", "pytest-timeout<3", "pytest-xdist>=3,<4", "onnx>=1.16,<2", "onnxscript>=0.2,<1", "onnxruntime>=1.18,<2"],
    },
)
