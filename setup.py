from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="lms_api",
    version="0.1.0",
    description="A safe REST gateway in front of Moodle web services",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests", "tests.*"]),
    include_package_data=True,
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "test": [
            "pytest>=8,<10",
            "responses>=0.25,<1",
            "webtest>=3.0,<4",
            "ruff>=0.15,<0.18",
            "hypothesis>=6.100,<7",
            "mypy>=1.15,<3",
            "pytest-cov>=6,<8",
            "pytest-xdist>=3.6,<4",
            "openapi-spec-validator>=0.7,<1",
            "playwright>=1.40,<2",
            "schemathesis>=4,<5",
            # Event streams as a browser's EventSource and WebSocket receive them, through nginx and nchan.
            "requests-sse>=0.5,<1",
            "websockets>=13,<18",
        ],
    },
    entry_points={
        "paste.app_factory": ["main = lms_api:main"],
        "console_scripts": ["lms-api = lms_api.cli:main"],
    },
)
