mod bind;
mod doctor;
mod holders;
mod release;
mod remap;
mod state;
mod task_file;
