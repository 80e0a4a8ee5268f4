from enforcement.cli import main

main()
