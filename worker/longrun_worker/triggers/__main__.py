from longrun_worker.triggers.cli import main

main()
