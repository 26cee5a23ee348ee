from mmgraph.cli import entry

entry()
