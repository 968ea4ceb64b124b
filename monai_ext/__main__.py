from monai_ext.cli import main

if __name__ == "__main__":
    main()
