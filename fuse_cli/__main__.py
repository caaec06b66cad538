from fuse_cli.app import run

run()
