"""img2dataset-ng: turn lists of image URLs into training datasets."""
from pathlib import Path

from setuptools import find_packages, setup

EXTRAS = {
    "spark": ["pyspark>=3.3"],
    "ray": ["ray>=2.9"],
    "s3": ["s3fs>=2023.1"],
    "wandb": ["wandb>=0.16"],
    # model="x.onnx" (stages/model.py); on GPU machines install onnxruntime-gpu instead
    "model": ["onnxruntime>=1.16"],
    "dev": [
        "pytest>=7",
        "pytest-timeout>=2",
        "webdataset>=0.2",
        "moto[s3]>=5",
        "flask",
        "flask-cors",
        "pex>=2.1",
        "wheel",
        "ruff>=0.4",
        "pillow",
        "tfrecord>=1.14",
        "nbclient",
        "nbformat",
        "ipykernel",
        "datasets",
        "trustme",
        "imagehash",
        "wids",
        "onnx",  # the tests build their own small models
        # the decoders bench/codecs.py tries against those kept
        "simplejpeg",
        "pyvips",
        "pyvips-binary",
        # wids imports torch: its CPU build (the default wheel brings gigabytes of CUDA libraries)
        'torch==2.13.0+cpu; sys_platform == "linux" and platform_machine == "x86_64"',
    ],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="img2dataset-ng",
    version="0.1.0",
    description="Turn large sets of image urls into an image dataset; a faster drop-in successor of img2dataset.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["img2dataset_ng", "img2dataset_ng.*"]),
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22",
        "opencv-python-headless>=4.6",
        "pyarrow>=12",
        "fsspec>=2023.1",
        "urllib3>=1.26",
        "tqdm>=4.60",
        "exifread>=3.0",
        "google-crc32c>=1.5",
        "protego>=0.3",
        # decoders that beat OpenCV's on their format (stages/decoders.py); OpenCV decodes all without them
        "pyspng>=0.1.2",
        "webp>=0.3",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["img2dataset-ng=img2dataset_ng.cli:main"]},
)
