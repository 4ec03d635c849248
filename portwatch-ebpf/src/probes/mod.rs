mod bind;
mod doctor;
mod holders;
mod release;
mod state;
mod task_file;
mod remap;
