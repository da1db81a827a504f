import sys

from rnnkit.train.distributed import finish_process

from . import main

sys.exit(finish_process(main()))  # a torchrun rank leaves with os._exit (finish_process)
