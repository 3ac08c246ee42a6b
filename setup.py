from setuptools import find_packages, setup

setup(
    name="autoseg",
    version="0.1.0",
    description="Self-configuring medical image segmentation in the nnU-Net tradition",
    python_requires=">=3.10",
    packages=find_packages(include=["autoseg", "autoseg.*"]) + ["autoseg._plans"],
    # plans/ (presets, JSON schema, golden plans) lives at the top of the repository and is installed as the
    # package autoseg._plans, so a non-editable install finds it through importlib.resources
    package_dir={"autoseg._plans": "plans"},
    package_data={"autoseg._plans": ["presets/*.json", "schema/*.json", "examples/*.json"]},
    install_requires=[
        "torch>=2.11",  # the versions tested; constraints.txt pins the CPU build's exact one
        "numpy",
        "SimpleITK",
        "nibabel",
        "scipy",
        "batchgenerators",
        "scikit-image",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "onnx": ["onnx", "onnxruntime"],
        "serve": ["fastapi", "uvicorn", "python-multipart"],
        "tensorboard": ["tensorboard"],
        "mlflow": ["mlflow-skinny", "sqlalchemy", "alembic"],
        "cluster": ["dask[distributed]", "dask-jobqueue", "pyyaml"],
        # DICOM series in, DICOM-SEG out; pylibjpeg-openjpeg decodes JPEG 2000 / HTJ2K, highdicom brings Pillow
        # (JPEG baseline) and pyjpegls (JPEG-LS)
        # dicomweb-client: `autoseg serve --studies URL` (a PACS as the datastore: QIDO-RS, WADO-RS, STOW-RS)
        "dicom": ["pydicom>=3.0", "highdicom>=0.28", "pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0", "dicomweb-client"],
        # JPEG Lossless and 12-bit JPEG pixel data: pylibjpeg-libjpeg is GPL-3.0, hence an opt-in extra of its own
        "dicom-jpeg": ["pydicom>=3.0", "pylibjpeg>=2.0", "pylibjpeg-libjpeg>=2.1"],
        # `autoseg convert` of RTSTRUCT annotations: contours are rasterised by autoseg's own scan-line fill
        # (autoseg.io.rtstruct, numpy only); rt-utils would pull in opencv-python (80 MB) for the same
        "rtstruct": ["pydicom>=3.0"],
        # the tests exercise the optional parts too: ONNX export/runtime and a real server with a real client
        "test": ["pytest", "pytest-timeout", "onnx", "onnxruntime", "fastapi", "uvicorn", "python-multipart", "httpx",
                 "tensorboard", "mlflow-skinny", "sqlalchemy", "alembic", "dask[distributed]", "dask-jobqueue",
                 "pyyaml", "pydicom>=3.0", "highdicom>=0.28", "pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0",
                 "pylibjpeg-libjpeg>=2.1", "dicomweb-client"],
    },
    entry_points={"console_scripts": ["autoseg = autoseg.cli:main"]},
)
