from specgate.cli import main

main()
