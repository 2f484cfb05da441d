"""Packaging for wcsgw, a SIP-to-RTMP gateway on Twisted."""

from setuptools import find_packages, setup

setup(
    name="wcsgw",
    version="0.1.0",
    description="SIP-to-RTMP gateway with a Flashphoner WCS compatible REST API",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["wcsgw", "wcsgw.*"]) + ["twisted.plugins"],
    package_data={"wcsgw": ["py.typed"], "twisted": ["plugins/wcsgw_plugin.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "klein>=23.5",
        "treq>=23.11",
        "sipmessage>=0.7",
        "pylibsrtp>=0.10",
        "av>=12",
    ],
    extras_require={
        "test": ["hypothesis>=6.90", "numpy>=1.24"],
        "bench": ["matplotlib>=3.8", "numpy>=1.24"],
    },
    entry_points={
        "console_scripts": ["wcsgw-passwd = wcsgw.passwd:main"],
    },
    zip_safe=False,
)
