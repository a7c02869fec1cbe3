from citycast.cli import main

main()
