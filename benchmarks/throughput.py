"""Offline throughput benchmark; the same as `ladle bench throughput` (see its --help)."""

import argparse

from ladle.bench import throughput

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    throughput.add_arguments(parser)
    throughput.run(parser.parse_args())
